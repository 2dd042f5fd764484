"""ClaudeAdapter's own dialect: the key and its headers, the top-level system prompt, and
the Messages API's named events with their usage and in-band errors.

What every HTTP adapter does the same way (request body, status errors, cuts,
cancellation) is in test_http_adapters.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from fakes import WORDS
from helpers import TEXT, collect, collect_error
from helpers import claude as make_claude
from multidict import CIMultiDict
from structlog.testing import capture_logs
from yarl import URL

from pollex.adapters import ChatRequest, Finish, Message, ProbeResult, Usage
from pollex.adapters.claude import API_VERSION, ClaudeAdapter, session_headers
from pollex.adapters.http import make_session
from pollex.errors import UpstreamError

BASE = "https://api.anthropic.test"
MESSAGES_URL = URL(f"{BASE}/v1/messages")
KEY = "sk-ant-test-key"
MODEL = "claude-sonnet-4-5-20250929"
SSE = {"Content-Type": "text/event-stream"}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A session made the way pollex makes Claude's: it carries the key."""
    async with make_session(1.0, session_headers(KEY)) as s:
        yield s


def claude(session: aiohttp.ClientSession, url: str = BASE, key: str = KEY) -> ClaudeAdapter:
    return make_claude(session, url, MODEL, api_key=key)


def event(name: str | None, data: Any) -> bytes:
    head = f"event: {name}\n" if name else ""
    text = data if isinstance(data, str) else json.dumps(data)
    return f"{head}data: {text}\n\n".encode()


def start(input_tokens: int = 12) -> bytes:
    message: dict[str, Any] = {"type": "message", "role": "assistant", "content": []}
    message["usage"] = {"input_tokens": input_tokens, "output_tokens": 1}
    return event("message_start", {"type": "message_start", "message": message})


def delta(text: str, kind: str = "text_delta") -> bytes:
    body = {"type": kind, "text" if kind == "text_delta" else "partial": text}
    return event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": body})


def message_delta(stop_reason: str | None = "end_turn", output_tokens: int = 2) -> bytes:
    data = {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": {"output_tokens": output_tokens},
    }
    return event("message_delta", data)


STOP = event("message_stop", {"type": "message_stop"})
# The same events without `event:` lines: the name is read from `type`.
TYPE_ONLY: list[dict[str, Any]] = [
    {"type": "message_start", "message": {"usage": {"input_tokens": 5}}},
    {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "I"}},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {}},
    {"type": "message_stop"},
]
PING = event("ping", {"type": "ping"})


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_1"}


# --- the key ---------------------------------------------------------------------------------


def test_session_headers() -> None:
    assert session_headers(KEY) == {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    assert API_VERSION == "2023-06-01"


@pytest.mark.parametrize(
    ("key", "expected"),
    [(KEY, ProbeResult(True)), ("", ProbeResult(False, "no API key"))],
)
async def test_probe(session: aiohttp.ClientSession, key: str, expected: ProbeResult) -> None:
    assert await claude(session, key=key).probe() == expected


async def test_probe_after_the_key_was_rejected(
    session: aiohttp.ClientSession, anthropic: Any
) -> None:
    adapter = claude(session, anthropic.url)
    assert (await adapter.probe()).available
    anthropic.fake.state = "unauthorized"
    with pytest.raises(UpstreamError):
        await collect(adapter)
    assert await adapter.probe() == ProbeResult(False, "API key rejected")


@pytest.mark.parametrize("status", [401, 400, 403, 404, 408, 409, 413, 429, 500, 502, 503, 529])
async def test_only_401_rejects_the_key(
    mock: aioresponses, session: aiohttp.ClientSession, status: int
) -> None:
    """Every status of test_http_adapters' Anthropic table; only 401 turns the probe off."""
    adapter = claude(session)
    mock.post(str(MESSAGES_URL), status=status, body=json.dumps(error_body("some_error", "no")))
    _, error = await collect_error(adapter)
    assert error.kind == "status"
    assert (await adapter.probe()).available is (status != 401)


# --- request headers and the system prompt ---------------------------------------------------


async def test_stream_request_carries_the_key(
    mock: aioresponses, session: aiohttp.ClientSession
) -> None:
    mock.post(str(MESSAGES_URL), body=start() + delta("I went") + STOP, headers=SSE)
    chunks, _ = await collect(claude(session))
    [call] = mock.requests[("POST", MESSAGES_URL)]
    assert chunks == ["I went"]
    headers = CIMultiDict(call.kwargs["headers"])
    assert headers["x-api-key"] == KEY
    assert headers["anthropic-version"] == API_VERSION


async def test_stream_request_carries_the_key_over_the_wire(
    session: aiohttp.ClientSession, anthropic: Any
) -> None:
    chunks, finish = await collect(claude(session, anthropic.url))
    assert chunks == list(WORDS)
    assert finish == Finish("stop", Usage(12, len(WORDS)), ended=True)
    headers = CIMultiDict(anthropic.fake.headers[0])
    assert headers["x-api-key"] == KEY
    assert headers["anthropic-version"] == API_VERSION
    assert headers["content-type"].startswith("application/json")


@pytest.mark.parametrize(
    ("messages", "system", "sent"),
    [
        pytest.param((Message("user", TEXT),), None, [("user", TEXT)], id="no-system"),
        pytest.param(
            (Message("system", "A"), Message("system", "B"), Message("user", TEXT)),
            "A\n\nB",
            [("user", TEXT)],
            id="two-system",
        ),
        pytest.param(
            (
                Message("system", "A"),
                Message("user", "u1"),
                Message("assistant", "a1"),
                Message("user", TEXT),
            ),
            "A",
            [("user", "u1"), ("assistant", "a1"), ("user", TEXT)],
            id="conversation",
        ),
    ],
)
async def test_system_prompt_is_top_level(
    mock: aioresponses,
    session: aiohttp.ClientSession,
    messages: tuple[Message, ...],
    system: str | None,
    sent: list[tuple[str, str]],
) -> None:
    mock.post(str(MESSAGES_URL), body=start() + delta("x") + STOP, headers=SSE)
    await collect(claude(session), ChatRequest(messages, 64))
    [call] = mock.requests[("POST", MESSAGES_URL)]
    body = call.kwargs["json"]
    assert ("system" in body, body.get("system")) == (system is not None, system)
    assert [(m["role"], m["content"]) for m in body["messages"]] == sent


# --- stream events (aioresponses) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "text", "finish"),
    [
        pytest.param(
            start() + PING + delta("I") + delta(" went") + message_delta() + STOP,
            ["I", " went"],
            Finish("stop", Usage(12, 2), ended=True),
            id="named-events",
        ),
        pytest.param(
            b"".join(event(None, data) for data in TYPE_ONLY),
            ["I"],
            Finish("stop", Usage(5, 0), ended=True),
            id="type-only-no-event-lines",
        ),
        pytest.param(
            start() + delta("I") + message_delta("max_tokens", 64) + STOP,
            ["I"],
            Finish("length", Usage(12, 64), ended=True),
            id="max-tokens",
        ),
        pytest.param(
            start() + delta("I") + message_delta("stop_sequence", 3) + STOP,
            ["I"],
            Finish("stop", Usage(12, 3), ended=True),
            id="stop-sequence",
        ),
        pytest.param(
            start() + delta("I") + STOP, ["I"], Finish("stop", Usage(12, 0), ended=True), id="bare"
        ),
        pytest.param(
            start()
            + delta("hm", "thinking_delta")
            + delta("{}", "input_json_delta")
            + delta("", "text_delta")
            + event("content_block_start", {"type": "content_block_start", "index": 1})
            + event("future_event", {"type": "future_event", "x": 1})
            + delta("I")
            + message_delta()
            + STOP,
            ["I"],
            Finish("stop", Usage(12, 2), ended=True),
            id="ignored-events",
        ),
        pytest.param(
            (b": comment\n\n" + start() + delta("I") + message_delta() + STOP).replace(
                b"\n", b"\r\n"
            ),
            ["I"],
            Finish("stop", Usage(12, 2), ended=True),
            id="CRLF-and-comments",
        ),
        pytest.param(
            (start() + delta("I") + message_delta() + STOP).replace(b"\n", b"\r"),
            ["I"],
            Finish("stop", Usage(12, 2), ended=True),
            id="CR",
        ),
        pytest.param(
            start() + delta("I") + message_delta() + STOP + delta("late"),
            ["I"],
            Finish("stop", Usage(12, 2), ended=True),
            id="nothing-after-stop",
        ),
    ],
)
async def test_stream_events(
    mock: aioresponses,
    session: aiohttp.ClientSession,
    body: bytes,
    text: list[str],
    finish: Finish,
) -> None:
    mock.post(str(MESSAGES_URL), body=body, headers=SSE)
    assert await collect(claude(session)) == (text, finish)


@pytest.mark.parametrize(
    ("body", "kind", "message", "failover", "marks_down"),
    [
        pytest.param(
            start() + delta("I") + event("error", error_body("overloaded_error", "Overloaded")),
            "status",
            "anthropic reported overloaded_error",
            True,
            True,
            id="overloaded",
        ),
        pytest.param(
            start() + event("error", error_body("api_error", "Internal")),
            "status",
            "anthropic reported api_error",
            True,
            True,
            id="api-error",
        ),
        pytest.param(
            start() + event("error", error_body("rate_limit_error", "Slow down")),
            "status",
            "anthropic reported rate_limit_error",
            True,
            True,
            id="rate-limit",
        ),
        pytest.param(
            start() + event("error", error_body("invalid_request_error", "bad")),
            "status",
            "anthropic reported invalid_request_error",
            False,
            False,
            id="invalid-request",
        ),
        pytest.param(
            start() + event(None, error_body("overloaded_error", "Overloaded")),
            "status",
            "anthropic reported overloaded_error",
            True,
            True,
            id="type-only-error",
        ),
        pytest.param(
            start() + event("error", {"type": "error"}),
            "status",
            "anthropic reported an error",
            False,
            False,
            id="error-without-details",
        ),
        pytest.param(
            # Not one of Anthropic's names: its type may carry anything, so it is not shown.
            start() + event("error", error_body("bad: i goes to store", "bad")),
            "status",
            "anthropic reported an error",
            False,
            False,
            id="error-type-not-a-name",
        ),
        pytest.param(
            start() + b"event: ping\ndata: {\n\n",
            "protocol",
            "anthropic sent an event that is not JSON",
            True,
            True,
            id="not-json",
        ),
        pytest.param(
            start() + event("content_block_delta", [1]),
            "protocol",
            "anthropic sent JSON that is not an object",
            True,
            True,
            id="not-an-object",
        ),
        pytest.param(
            start() + delta("I") + message_delta(),
            "protocol",
            "anthropic stream ended before message_stop",
            True,
            True,
            id="eof-after-message-delta",
        ),
        pytest.param(
            start() + delta("I") + STOP.rstrip(b"\n"),
            "protocol",
            "anthropic stream ended before message_stop",
            True,
            True,
            id="unterminated-stop",
        ),
    ],
)
async def test_stream_errors(
    mock: aioresponses,
    session: aiohttp.ClientSession,
    body: bytes,
    kind: str,
    message: str,
    failover: bool,
    marks_down: bool,
) -> None:
    mock.post(str(MESSAGES_URL), body=body, headers=SSE)
    with capture_logs() as logs:
        _, error = await collect_error(claude(session))
    assert error.kind == kind
    assert str(error) == message
    assert (error.failover, error.marks_down) == (failover, marks_down)
    if kind == "status":
        # Anthropic's own message is for the debug log only, cut short.
        reported = [e for e in logs if e["event"] == "upstream_reported_error"]
        assert [(e["log_level"], e["upstream"]) for e in reported] == [("debug", "anthropic")]
        assert len(reported[0]["detail"]) <= 200
