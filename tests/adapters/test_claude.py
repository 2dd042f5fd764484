"""ClaudeAdapter: request shape and headers (aioresponses), then named-event SSE over sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from adapter_calls import CHAT, SYSTEM, TEXT, collect, collect_error
from aioresponses import aioresponses
from fakes import WORDS
from multidict import CIMultiDict
from yarl import URL

from pollex.adapters import ChatRequest, Completion, Finish, Message, ProbeResult, Usage
from pollex.adapters.claude import API_VERSION, ClaudeAdapter, session_headers
from pollex.adapters.http import make_session
from pollex.errors import UpstreamError

BASE = "https://api.anthropic.test"
MESSAGES_URL = URL(f"{BASE}/v1/messages")
KEY = "sk-ant-test-key"
MODEL = "claude-sonnet-4-5-20250929"
FAKE_FINISH = Finish("stop", Usage(12, len(WORDS)))  # the fake's input_tokens and words
SSE = {"Content-Type": "text/event-stream"}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with make_session(1.0, session_headers(KEY)) as s:
        yield s


def claude(session: aiohttp.ClientSession, url: str = BASE, key: str = KEY) -> ClaudeAdapter:
    return ClaudeAdapter(session, key, MODEL, url)


def event(name: str | None, data: Any) -> bytes:
    head = f"event: {name}\n" if name else ""
    text = data if isinstance(data, str) else json.dumps(data)
    return f"{head}data: {text}\n\n".encode()


def start(input_tokens: int = 12) -> bytes:
    message = {"type": "message", "role": "assistant", "content": []}
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
PING = event("ping", {"type": "ping"})


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_1"}


# --- identity and probe ----------------------------------------------------------------------


async def test_identity(session: aiohttp.ClientSession) -> None:
    adapter = ClaudeAdapter(session, KEY, "claude-test", first_token_timeout_s=9.0)
    assert (adapter.id, adapter.name, adapter.provider) == (
        "claude-test",
        "Claude (claude-test)",
        "claude",
    )
    assert adapter.first_token_timeout_s == 9.0


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


# --- request shape (aioresponses) -----------------------------------------------------------


def expected_body(*, stream: bool, system: str | None = SYSTEM) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": TEXT}],
        "stream": stream,
        "temperature": 0.0,
    }
    if system is not None:
        body["system"] = system
    return body


@pytest.mark.parametrize("base", [BASE, BASE + "/"])
async def test_stream_request_shape(
    mock: aioresponses, session: aiohttp.ClientSession, base: str
) -> None:
    mock.post(str(MESSAGES_URL), body=start() + delta("I went") + STOP, headers=SSE)
    chunks, _ = await collect(claude(session, base))
    [call] = mock.requests[("POST", MESSAGES_URL)]
    assert chunks == ["I went"]
    assert call.kwargs["json"] == expected_body(stream=True)
    headers = CIMultiDict(call.kwargs["headers"])
    assert headers["x-api-key"] == KEY
    assert headers["anthropic-version"] == API_VERSION


async def test_complete_request_shape_and_answer(
    mock: aioresponses, session: aiohttp.ClientSession
) -> None:
    answer = {
        "type": "message",
        "content": [
            {"type": "text", "text": "I went"},
            {"type": "tool_use", "id": "x", "name": "t", "input": {}},
            {"type": "text", "text": " home."},
        ],
        "stop_reason": "max_tokens",
        "usage": {"input_tokens": 30, "output_tokens": 64},
    }
    mock.post(str(MESSAGES_URL), payload=answer)
    result = await claude(session).complete(CHAT)
    [call] = mock.requests[("POST", MESSAGES_URL)]
    assert call.kwargs["json"] == expected_body(stream=False)
    assert CIMultiDict(call.kwargs["headers"])["x-api-key"] == KEY
    assert result == Completion("I went home.", Finish("length", Usage(30, 64)))


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
    assert body.get("system") == system
    assert [(m["role"], m["content"]) for m in body["messages"]] == sent


# --- non-200 answers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "message", "failover", "marks_down"),
    [
        (529, error_body("overloaded_error", "Overloaded"), "Overloaded", True, True),
        (429, error_body("rate_limit_error", "Rate limited"), "Rate limited", True, True),
        (500, error_body("api_error", "Internal error"), "Internal error", True, True),
        (503, error_body("api_error", "Unavailable"), "Unavailable", True, True),
        (408, error_body("timeout_error", "Timeout"), "Timeout", True, True),
        (409, error_body("conflict", "Conflict"), "Conflict", True, True),
        (400, error_body("invalid_request_error", "max_tokens: bad"), "max_tokens", False, False),
        (401, error_body("authentication_error", "invalid x-api-key"), "x-api-key", False, True),
        (403, error_body("permission_error", "Forbidden"), "Forbidden", False, False),
        (404, error_body("not_found_error", "model: nope"), "model: nope", False, False),
        (413, error_body("request_too_large", "Too large"), "Too large", False, False),
        (502, "<html><h1>502 Bad Gateway</h1></html>", "502 Bad Gateway", True, True),
        (400, {"error": "a string"}, '{"error": "a string"}', False, False),
    ],
)
@pytest.mark.parametrize("mode", ["stream", "complete"])
async def test_status_error(
    mock: aioresponses,
    session: aiohttp.ClientSession,
    mode: str,
    status: int,
    body: Any,
    message: str,
    failover: bool,
    marks_down: bool,
) -> None:
    adapter = claude(session)
    text = body if isinstance(body, str) else json.dumps(body)
    mock.post(str(MESSAGES_URL), status=status, body=text)
    with pytest.raises(UpstreamError) as info:
        if mode == "stream":
            await collect(adapter)
        else:
            await adapter.complete(CHAT)
    error = info.value
    assert message in str(error)
    assert str(error).startswith("anthropic: ")
    assert str(error).endswith(f"(HTTP {status})")
    assert (error.kind, error.failover, error.marks_down) == ("status", failover, marks_down)
    assert (await adapter.probe()).available is (status != 401)


@pytest.mark.parametrize(
    ("state", "message", "failover"),
    [
        ("overloaded", "anthropic: Overloaded (HTTP 529)", True),
        ("unauthorized", "anthropic: invalid x-api-key (HTTP 401)", False),
    ],
)
@pytest.mark.parametrize("mode", ["stream", "complete"])
async def test_status_error_over_the_wire(
    session: aiohttp.ClientSession,
    anthropic: Any,
    mode: str,
    state: str,
    message: str,
    failover: bool,
) -> None:
    anthropic.fake.state = state
    adapter = claude(session, anthropic.url)
    with pytest.raises(UpstreamError) as info:
        if mode == "stream":
            await collect(adapter)
        else:
            await adapter.complete(CHAT)
    assert str(info.value) == message
    assert (info.value.failover, info.value.marks_down) == (failover, True)


# --- malformed 200 answers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "kind", "message"),
    [
        pytest.param("<html>proxy error</html>", "protocol", "not JSON", id="html"),
        pytest.param('{"content": [', "protocol", "not JSON", id="truncated-json"),
        pytest.param("[]", "protocol", "not an object", id="json-list"),
        pytest.param('{"content": []}', "protocol", "empty content", id="no-blocks"),
        pytest.param("{}", "protocol", "empty content", id="no-content"),
        pytest.param(
            '{"content": [{"type": "text", "text": ""}]}', "protocol", "empty content", id="empty"
        ),
        pytest.param(
            '{"content": [{"type": "thinking", "thinking": "hm"}]}',
            "protocol",
            "empty content",
            id="no-text-block",
        ),
        pytest.param(
            json.dumps(error_body("overloaded_error", "Overloaded")),
            "status",
            "anthropic: Overloaded (overloaded_error)",
            id="error-in-200",
        ),
    ],
)
async def test_complete_malformed(
    mock: aioresponses, session: aiohttp.ClientSession, body: str, kind: str, message: str
) -> None:
    mock.post(str(MESSAGES_URL), body=body)
    with pytest.raises(UpstreamError) as info:
        await claude(session).complete(CHAT)
    assert info.value.kind == kind
    assert message in str(info.value)


# --- stream events (aioresponses) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "text", "finish"),
    [
        pytest.param(
            start() + PING + delta("I") + delta(" went") + message_delta() + STOP,
            ["I", " went"],
            Finish("stop", Usage(12, 2)),
            id="named-events",
        ),
        pytest.param(
            b"".join(
                event(None, {"type": t, **d})
                for t, d in [
                    ("message_start", {"message": {"usage": {"input_tokens": 5}}}),
                    ("content_block_delta", {"delta": {"type": "text_delta", "text": "I"}}),
                    ("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {}}),
                    ("message_stop", {}),
                ]
            ),
            ["I"],
            Finish("stop", Usage(5, 0)),
            id="type-only-no-event-lines",
        ),
        pytest.param(
            start() + delta("I") + message_delta("max_tokens", 64) + STOP,
            ["I"],
            Finish("length", Usage(12, 64)),
            id="max-tokens",
        ),
        pytest.param(
            start() + delta("I") + message_delta("stop_sequence", 3) + STOP,
            ["I"],
            Finish("stop", Usage(12, 3)),
            id="stop-sequence",
        ),
        pytest.param(start() + delta("I") + STOP, ["I"], Finish("stop", Usage(12, 0)), id="bare"),
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
            Finish("stop", Usage(12, 2)),
            id="ignored-events",
        ),
        pytest.param(
            (b": comment\n\n" + start() + delta("I") + message_delta() + STOP).replace(
                b"\n", b"\r\n"
            ),
            ["I"],
            Finish("stop", Usage(12, 2)),
            id="CRLF-and-comments",
        ),
        pytest.param(
            (start() + delta("I") + message_delta() + STOP).replace(b"\n", b"\r"),
            ["I"],
            Finish("stop", Usage(12, 2)),
            id="CR",
        ),
        pytest.param(
            start() + delta("I") + message_delta() + STOP + delta("late"),
            ["I"],
            Finish("stop", Usage(12, 2)),
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
    ("body", "kind", "message", "failover"),
    [
        pytest.param(
            start() + delta("I") + event("error", error_body("overloaded_error", "Overloaded")),
            "status",
            "anthropic: Overloaded (overloaded_error)",
            True,
            id="overloaded",
        ),
        pytest.param(
            start() + event("error", error_body("invalid_request_error", "bad")),
            "status",
            "anthropic: bad (invalid_request_error)",
            False,
            id="invalid-request",
        ),
        pytest.param(
            start() + event("error", {"type": "error"}), "status", "anthropic: error", False
        ),
        pytest.param(start() + delta("I"), "protocol", "before message_stop", True, id="eof"),
        pytest.param(start() + b"event: ping\ndata: {\n\n", "protocol", "not JSON", True),
        pytest.param(
            start() + event("content_block_delta", [1]), "protocol", "not an object", True
        ),
        pytest.param(b"<html>proxy error</html>", "protocol", "before message_stop", True),
        pytest.param(start() + delta("I") + STOP.rstrip(b"\n"), "protocol", "message_stop", True),
    ],
)
async def test_stream_errors(
    mock: aioresponses,
    session: aiohttp.ClientSession,
    body: bytes,
    kind: str,
    message: str,
    failover: bool,
) -> None:
    mock.post(str(MESSAGES_URL), body=body, headers=SSE)
    _, error = await collect_error(claude(session))
    assert error.kind == kind
    assert message in str(error)
    assert error.failover is failover


async def test_stream_line_too_long(mock: aioresponses, session: aiohttp.ClientSession) -> None:
    mock.post(str(MESSAGES_URL), body=start() + b"data: " + b"x" * 300, headers=SSE)
    adapter = ClaudeAdapter(session, KEY, MODEL, BASE, max_line_bytes=200)
    _, error = await collect_error(adapter)
    assert (error.kind, error.marks_down) == ("protocol", False)


# --- streaming over the wire -----------------------------------------------------------------


async def test_stream(session: aiohttp.ClientSession, anthropic: Any) -> None:
    chunks, finish = await collect(claude(session, anthropic.url))
    assert chunks == list(WORDS)
    assert finish == FAKE_FINISH
    assert anthropic.fake.requests == [expected_body(stream=True)]
    headers = CIMultiDict(anthropic.fake.headers[0])
    assert headers["x-api-key"] == KEY
    assert headers["anthropic-version"] == API_VERSION
    assert headers["content-type"].startswith("application/json")


async def test_complete_over_the_wire(session: aiohttp.ClientSession, anthropic: Any) -> None:
    result = await claude(session, anthropic.url).complete(CHAT)
    assert result == Completion("".join(WORDS), FAKE_FINISH)
    assert anthropic.fake.requests == [expected_body(stream=False)]


async def test_stream_is_not_buffered(session: aiohttp.ClientSession, anthropic: Any) -> None:
    anthropic.fake.gate = asyncio.Event()
    anthropic.fake.gate_after = 4  # message_start, content_block_start, ping, first delta
    finish = Finish()
    stream = claude(session, anthropic.url).stream(CHAT, finish)
    first = await asyncio.wait_for(stream.__anext__(), 2)
    assert first == WORDS[0]
    assert not anthropic.fake.gate.is_set()
    anthropic.fake.gate.set()
    assert [first] + [chunk async for chunk in stream] == list(WORDS)
    assert finish == FAKE_FINISH


async def test_stream_mid_stream_error(session: aiohttp.ClientSession, anthropic: Any) -> None:
    anthropic.fake.mid_stream_error = True
    chunks, error = await collect_error(claude(session, anthropic.url))
    assert chunks == list(WORDS[:2])
    assert str(error) == "anthropic: Overloaded (overloaded_error)"
    assert (error.kind, error.failover, error.marks_down) == ("status", True, True)


@pytest.mark.parametrize("cut_after", [2, 5, 3 + len(WORDS) + 2])
async def test_stream_cut(session: aiohttp.ClientSession, anthropic: Any, cut_after: int) -> None:
    """Cut in the preamble, mid-answer, and after message_delta (before message_stop)."""
    anthropic.fake.cut_after = cut_after
    chunks, error = await collect_error(claude(session, anthropic.url))
    # aiohttp drops what it buffered when the cut arrives with it: a prefix, never more.
    assert chunks == list(WORDS[: len(chunks)])
    assert error.kind == "protocol"


# --- cancellation ----------------------------------------------------------------------------


async def test_closing_the_stream_closes_the_upstream(
    session: aiohttp.ClientSession, anthropic: Any
) -> None:
    anthropic.fake.chunk_delay = 0.05
    stream = claude(session, anthropic.url).stream(CHAT, Finish())
    assert await stream.__anext__() == WORDS[0]
    await stream.aclose()
    await asyncio.wait_for(anthropic.fake.cancelled.wait(), 2)
    assert anthropic.fake.streams_completed == 0


async def test_cancelling_the_consumer_closes_the_upstream(
    session: aiohttp.ClientSession, anthropic: Any
) -> None:
    anthropic.fake.chunk_delay = 0.05
    got_first = asyncio.Event()

    async def consume() -> None:
        async for _ in claude(session, anthropic.url).stream(CHAT, Finish()):
            got_first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_first.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(anthropic.fake.cancelled.wait(), 2)
    assert anthropic.fake.streams_completed == 0
