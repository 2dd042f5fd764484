"""What the three HTTP adapters share, tested once for each: llama.cpp, Ollama, Claude.

They share one read loop (`HttpAdapter._read_stream`), one POST with its error translation
and one way of closing the upstream. Each `Upstream` below bundles what a shared test needs
to know of one adapter: how it is built, which fake serves it (tests/fakes.py), what it
sends, what the fake answers, and the name and end marker its errors use. What is one
dialect's own (b5050, NDJSON framing, Anthropic's events and key) stays in its own file.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import aiohttp
import pytest
from aiohttp import web
from aioresponses import aioresponses
from captures import load, wire_chunks
from fakes import WORDS, closed_port_url
from helpers import (
    CHAT,
    SYSTEM,
    TEXT,
    cancel_after_first_chunk,
    claude,
    collect,
    collect_error,
    llamacpp,
    ollama,
)
from structlog.testing import capture_logs

from pollex.adapters import Adapter, Finish, ProbeResult, Usage
from pollex.errors import UpstreamError

BASE = "http://upstream.test:8080"
MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TEXT}]


class MidStream(NamedTuple):
    """What the fake's in-band error gives: the texts before it, and the error; `detail` is
    the upstream's own words, which stay out of the error (they may quote the request)."""

    chunks: int
    message: str
    failover: bool
    marks_down: bool
    detail: str


@dataclass(frozen=True)
class Upstream:
    """One HTTP adapter and the fake that plays its upstream."""

    provider: str
    label: str  # the adapter name's prefix
    make: Callable[..., Adapter]  # a tests/helpers.py factory: (session, url, model, ...)
    model: str
    fixture: str  # the conftest fixture serving the fake
    path: str  # where a chat is POSTed
    upstream: str  # the name its errors use
    end_marker: str  # what a complete stream ends with
    content_type: str
    body: Callable[[str], dict[str, Any]]  # the request body sent for CHAT, by model
    temperature: Callable[[dict[str, Any]], Any]  # where the body carries it
    chunks: tuple[str, ...]  # what the fake streams by default
    finish: Finish  # how the fake's stream ends
    gate_after: int  # the fake's first chunk after the first text
    knob: str  # the fake's attribute that chooses its answer
    hang: Callable[[Any], None]  # makes the fake take a chat and never answer, not even headers
    first: bytes  # one stream item whose text is `chunks[0]`
    long_line: bytes  # the start of a line that never ends (over 300 bytes)
    mid_stream: MidStream  # the fake's in-band error (`mid_stream_error`)
    garbage: str  # the error of a 200 that is a proxy's HTML page

    def adapter(self, session: aiohttp.ClientSession, url: str, **limits: Any) -> Adapter:
        return self.make(session, url, self.model, **limits)

    @property
    def url(self) -> str:
        return f"{BASE}{self.path}"

    @property
    def ended_early(self) -> str:
        return f"{self.upstream} stream ended before {self.end_marker}"


def _llamacpp_body(model: str) -> dict[str, Any]:
    return {
        "model": model,
        "messages": MESSAGES,
        "temperature": 0,
        "max_tokens": 64,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def _ollama_body(model: str) -> dict[str, Any]:
    return {
        "model": model,
        "messages": MESSAGES,
        "stream": True,
        "options": {"temperature": 0, "num_predict": 64},
    }


def _claude_body(model: str) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 64,
        "messages": MESSAGES[1:],
        "stream": True,
        "temperature": 0,
        "system": SYSTEM,
    }


def _claude_delta(text: str) -> bytes:
    data = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": text},
    }
    return f"event: content_block_delta\ndata: {json.dumps(data)}\n\n".encode()


def _hang_by(knob: str) -> Callable[[Any], None]:
    def hang(fake: Any) -> None:
        setattr(fake, knob, "hang")

    return hang


def _record_then_hang(fake: Any) -> None:
    """FakeAnthropic has no `hang` state: record the request, then hang as the others do."""
    record = fake._record

    async def record_then_hang(request: web.Request) -> Any:
        await record(request)
        return await fake._hang_forever()

    fake._record = record_then_hang


PAGE = "<html>proxy error</html>"  # a proxy's page, with status 200

LLAMACPP = Upstream(
    provider="llamacpp",
    label="llama.cpp",
    make=llamacpp,
    model="qwen2.5-1.5b-gpu",
    fixture="llama",
    path="/v1/chat/completions",
    upstream="llama-server",
    end_marker="[DONE]",
    content_type="text/event-stream",
    body=_llamacpp_body,
    temperature=lambda body: body["temperature"],
    # The capture (chat-stream.http): its first HTTP chunk is the role-only chunk and "i".
    chunks=("i", " goes", " to", " store", " yesterday"),
    finish=Finish("stop", Usage(52, 11, 85.65), ended=True),  # cache_n 47 + prompt_n 5
    gate_after=1,
    knob="chat",
    hang=_hang_by("chat"),
    first=wire_chunks("chat-stream.wire.http")[0],
    long_line=b"data: " + b"x" * 600,
    mid_stream=MidStream(
        3, "llama-server reported an error", True, False, "llama_decode failed: out of memory"
    ),
    # SSE ignores a line that is no field, so the page is a stream that just ends.
    garbage="llama-server stream ended before [DONE]",
)
OLLAMA = Upstream(
    provider="ollama",
    label="Ollama",
    make=ollama,
    model="qwen2.5:1.5b",  # the model FakeOllama has
    fixture="ollama",
    path="/api/chat",
    upstream="ollama",
    end_marker="done",
    content_type="application/x-ndjson",
    body=_ollama_body,
    temperature=lambda body: body["options"]["temperature"],
    chunks=WORDS,
    finish=Finish("stop", Usage(26, len(WORDS), 4.0), ended=True),  # 7 tokens in 1.75 s
    gate_after=1,
    knob="state",
    hang=_hang_by("state"),
    first=b'{"message": {"role": "assistant", "content": "I"}, "done": false}\n',
    long_line=b'{"message": "' + b"x" * 600,
    mid_stream=MidStream(
        2,
        "ollama reported an error",
        True,
        False,
        "an error was encountered while running the model",
    ),
    # NDJSON: the fragment left at EOF must be a whole JSON document (what it was is for
    # the debug log, not the error).
    garbage="malformed upstream stream",
)
CLAUDE = Upstream(
    provider="claude",
    label="Claude",
    make=claude,
    model="claude-sonnet-4-5-20250929",
    fixture="anthropic",
    path="/v1/messages",
    upstream="anthropic",
    end_marker="message_stop",
    content_type="text/event-stream",
    body=_claude_body,
    temperature=lambda body: body["temperature"],
    chunks=WORDS,
    finish=Finish("stop", Usage(12, len(WORDS)), ended=True),  # the fake's input_tokens
    gate_after=4,  # message_start, content_block_start, ping, then the first delta
    knob="state",
    hang=_record_then_hang,
    first=_claude_delta("I"),
    long_line=b"data: " + b"x" * 600,
    # Anthropic's error type is a name of its own, shown; its message is not.
    mid_stream=MidStream(2, "anthropic reported overloaded_error", True, True, "Overloaded"),
    garbage="anthropic stream ended before message_stop",
)
UPSTREAMS = [LLAMACPP, OLLAMA, CLAUDE]
# The two that run on the machine and are probed over HTTP; Claude's probe is its key.
LOCAL = [LLAMACPP, OLLAMA]


def ids(upstream: Upstream) -> str:
    return upstream.provider


@pytest.fixture(params=UPSTREAMS, ids=ids)
def spec(request: pytest.FixtureRequest) -> Upstream:
    """The adapter under test; tests with their own table parametrize `spec` directly."""
    param: Upstream = request.param
    return param


@pytest.fixture
def fake(request: pytest.FixtureRequest, spec: Upstream) -> Any:
    """The running fake (conftest's `Running`) of `spec`'s upstream."""
    return request.getfixturevalue(spec.fixture)


# --- identity --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [
        "qwen2.5-1.5b-gpu",
        "qwen2.5:1.5b-gpu",
        "llama3",
        "hf.co/org/model:Q4_K_M",
        "claude-test",
    ],
)
async def test_identity(session: aiohttp.ClientSession, spec: Upstream, model: str) -> None:
    adapter = spec.make(session, BASE, model, first_token_timeout_s=7.5)
    assert (adapter.id, adapter.name, adapter.provider) == (
        model,
        f"{spec.label} ({model})",
        spec.provider,
    )
    assert adapter.first_token_timeout_s == 7.5


# --- one whole answer over the wire ----------------------------------------------------------


@pytest.mark.parametrize("slash", ["", "/"], ids=["base", "base-with-slash"])
async def test_stream_request_and_answer(
    session: aiohttp.ClientSession, spec: Upstream, fake: Any, slash: str
) -> None:
    """The request body, at the right path even from a base URL ending in `/` (the fake
    answers `//path` with 404), and the fake's whole answer with its finish."""
    chunks, finish = await collect(spec.adapter(session, fake.url + slash))
    assert chunks == list(spec.chunks)
    assert finish == spec.finish
    assert fake.fake.requests == [spec.body(spec.model)]
    assert fake.fake.streams_completed == 1


async def test_temperature_is_an_int_zero(
    session: aiohttp.ClientSession, spec: Upstream, fake: Any
) -> None:
    """Greedy decoding, sent as the integer 0 (`0 == 0.0`, so the body check cannot tell)."""
    await collect(spec.adapter(session, fake.url))
    temperature = spec.temperature(fake.fake.requests[0])
    assert (type(temperature), temperature) == (int, 0)


async def test_stream_is_not_buffered(
    session: aiohttp.ClientSession, spec: Upstream, fake: Any
) -> None:
    fake.fake.gate = asyncio.Event()  # holds everything after the first text
    fake.fake.gate_after = spec.gate_after
    finish = Finish()
    stream = spec.adapter(session, fake.url).stream(CHAT, finish)
    first = await asyncio.wait_for(stream.__anext__(), 2)
    assert first == spec.chunks[0]
    assert not fake.fake.gate.is_set()
    assert (finish.reason, finish.ended) == (None, False)
    fake.fake.gate.set()
    assert [first] + [chunk async for chunk in stream] == list(spec.chunks)
    assert finish == spec.finish


# --- non-200 answers (aioresponses) ----------------------------------------------------------


def _body(capture: str) -> str:
    return load(capture).body.decode()


def _capture_message(capture: str) -> str:
    message: str = json.loads(_body(capture))["error"]["message"]
    return message


def _oai_error(status: int, message: str, kind: str) -> str:
    return json.dumps({"error": {"code": status, "message": message, "type": kind}})


def _anthropic_error(kind: str, message: str) -> str:
    error = {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_1"}
    return json.dumps(error)


def _row(
    spec: Upstream,
    status: int,
    body: str,
    detail: str,
    failover: bool,
    marks_down: bool,
    id: str,
    what: str = "",
) -> Any:
    """`detail`: the upstream's own words, which go to the debug log and never into the
    error; `what`: the class of failure pollex recognised, which the error names."""
    return pytest.param(
        spec, status, body, detail, what, failover, marks_down, id=f"{spec.provider}-{id}"
    )


MODEL_MISSING = f"model '{OLLAMA.model}' not found"
STATUS_ERRORS = [
    # llama-server: 5xx, a context too small and a configuration that does not match this
    # server are worth another backend; only the 5xx and the mismatch mark it down.
    _row(
        LLAMACPP, 503, _body("chat-while-loading.http"), "Loading model", True, True, "503-loading"
    ),
    _row(
        LLAMACPP,
        500,
        _body("error-not-json.http"),
        "[json.exception.parse_error.101] parse error",
        True,
        True,
        "500-not-json",
    ),
    _row(
        LLAMACPP,
        400,
        _body("error-context-exceeded.http"),
        "request (12047 tokens) exceeds the available context",
        True,
        False,
        "400-context",
        what="context exceeded",
    ),
    _row(
        LLAMACPP,
        400,
        _body("error-no-messages.http"),
        "'messages' is required",
        False,
        False,
        "400",
    ),
    _row(
        LLAMACPP,
        401,
        _oai_error(401, "Invalid API Key", "authentication_error"),
        "Invalid API Key",
        True,
        True,
        "401",
    ),
    _row(
        LLAMACPP,
        404,
        _oai_error(404, "File Not Found", "not_found_error"),
        "File Not Found",
        True,
        True,
        "404",
    ),
    _row(
        LLAMACPP,
        502,
        "<html><body><h1>502 Bad Gateway</h1></body></html>",
        "502 Bad Gateway",
        True,
        True,
        "html-from-a-proxy",
    ),
    _row(LLAMACPP, 400, '{"error": "plain string"}', "plain string", False, False, "string"),
    _row(LLAMACPP, 400, '{"error": null}', '{"error": null}', False, False, "null-error"),
    _row(LLAMACPP, 400, "[1, 2]", "[1, 2]", False, False, "json-list"),
    _row(LLAMACPP, 500, "", "empty error body", True, True, "empty"),
    # Ollama: 5xx and 404 (model not found) are worth another backend.
    _row(OLLAMA, 404, json.dumps({"error": MODEL_MISSING}), MODEL_MISSING, True, True, "404"),
    _row(
        OLLAMA,
        500,
        json.dumps({"error": "llama runner process has terminated"}),
        "runner process",
        True,
        True,
        "500",
    ),
    _row(
        OLLAMA,
        503,
        json.dumps({"error": "server busy, please try again.  maximum pending requests exceeded"}),
        "server busy",
        True,
        True,
        "503",
    ),
    _row(OLLAMA, 502, "<html><h1>502 Bad Gateway</h1></html>", "Bad Gateway", True, True, "html"),
    _row(
        OLLAMA,
        400,
        json.dumps({"error": "model is required"}),
        "model is required",
        False,
        False,
        "400",
    ),
    _row(
        OLLAMA,
        400,
        json.dumps({"error": {"message": "openai shape"}}),
        "openai shape",
        False,
        False,
        "dict",
    ),
    _row(OLLAMA, 400, "", "empty error body", False, False, "empty"),
    # Anthropic: 5xx, 408, 409, 429 and 529 are worth another backend; 401 marks it down
    # without failover (test_claude checks that it also makes the probe say so).
    _row(
        CLAUDE,
        529,
        _anthropic_error("overloaded_error", "Overloaded"),
        "Overloaded",
        True,
        True,
        "529",
    ),
    _row(
        CLAUDE,
        429,
        _anthropic_error("rate_limit_error", "Rate limited"),
        "Rate limited",
        True,
        True,
        "429",
    ),
    _row(
        CLAUDE,
        500,
        _anthropic_error("api_error", "Internal error"),
        "Internal error",
        True,
        True,
        "500",
    ),
    _row(
        CLAUDE, 503, _anthropic_error("api_error", "Unavailable"), "Unavailable", True, True, "503"
    ),
    _row(CLAUDE, 408, _anthropic_error("timeout_error", "Timeout"), "Timeout", True, True, "408"),
    _row(CLAUDE, 409, _anthropic_error("conflict", "Conflict"), "Conflict", True, True, "409"),
    _row(
        CLAUDE,
        400,
        _anthropic_error("invalid_request_error", "max_tokens: bad"),
        "max_tokens",
        False,
        False,
        "400",
    ),
    _row(
        CLAUDE,
        401,
        _anthropic_error("authentication_error", "invalid x-api-key"),
        "x-api-key",
        False,
        True,
        "401",
    ),
    _row(
        CLAUDE,
        403,
        _anthropic_error("permission_error", "Forbidden"),
        "Forbidden",
        False,
        False,
        "403",
    ),
    _row(
        CLAUDE,
        404,
        _anthropic_error("not_found_error", "model: nope"),
        "model: nope",
        False,
        False,
        "404",
    ),
    _row(
        CLAUDE,
        413,
        _anthropic_error("request_too_large", "Too large"),
        "Too large",
        False,
        False,
        "413",
    ),
    _row(
        CLAUDE,
        502,
        "<html><h1>502 Bad Gateway</h1></html>",
        "502 Bad Gateway",
        True,
        True,
        "html",
    ),
    _row(
        CLAUDE,
        400,
        json.dumps({"error": "a string"}),
        '{"error": "a string"}',
        False,
        False,
        "string-error",
    ),
]


@pytest.mark.parametrize(
    ("spec", "status", "body", "detail", "what", "failover", "marks_down"), STATUS_ERRORS
)
async def test_status_error(
    mock: aioresponses,
    session: aiohttp.ClientSession,
    spec: Upstream,
    status: int,
    body: str,
    detail: str,
    what: str,
    failover: bool,
    marks_down: bool,
) -> None:
    mock.post(spec.url, status=status, body=body)
    with capture_logs() as logs:
        chunks, error = await collect_error(spec.adapter(session, BASE))
    assert chunks == []
    suffix = f" ({what})" if what else ""
    assert str(error) == f"{spec.upstream} answered HTTP {status}{suffix}"
    assert detail not in str(error)
    assert (error.kind, error.failover, error.marks_down) == ("status", failover, marks_down)
    # The upstream's message goes to the debug log, cut short.
    logged = [e for e in logs if e["event"] == "upstream_status"]
    assert [(e["log_level"], e["upstream"], e["status"]) for e in logged] == [
        ("debug", spec.upstream, status)
    ]
    assert detail in logged[0]["detail"]
    assert len(logged[0]["detail"]) <= 200


async def test_status_error_detail_is_cut_in_the_log(
    mock: aioresponses, session: aiohttp.ClientSession, spec: Upstream
) -> None:
    """An upstream message of any length is logged at most 200 characters long."""
    mock.post(spec.url, status=500, body=json.dumps({"error": "x" * 5000}))
    with capture_logs() as logs:
        _, error = await collect_error(spec.adapter(session, BASE))
    assert str(error) == f"{spec.upstream} answered HTTP 500"
    (logged,) = [e for e in logs if e["event"] == "upstream_status"]
    assert 0 < len(logged["detail"]) <= 200


@pytest.mark.parametrize(
    ("spec", "answer", "message", "detail", "failover", "marks_down"),
    [
        pytest.param(
            LLAMACPP,
            "loading",
            "llama-server answered HTTP 503",
            "Loading model",
            True,
            True,
            id="llamacpp-loading",
        ),
        pytest.param(
            LLAMACPP,
            "error500",
            "llama-server answered HTTP 500",
            _capture_message("error-not-json.http"),
            True,
            True,
            id="llamacpp-error500",
        ),
        pytest.param(
            LLAMACPP,
            "context",
            "llama-server answered HTTP 400 (context exceeded)",
            _capture_message("error-context-exceeded.http"),
            True,
            False,
            id="llamacpp-context",
        ),
        pytest.param(
            LLAMACPP,
            "bad_request",
            "llama-server answered HTTP 400",
            "'messages' is required",
            False,
            False,
            id="llamacpp-bad-request",
        ),
        pytest.param(
            OLLAMA,
            "missing_model",
            "ollama answered HTTP 404",
            MODEL_MISSING,
            True,
            True,
            id="ollama-missing-model",
        ),
        pytest.param(
            OLLAMA,
            "error500",
            "ollama answered HTTP 500",
            "llama runner process has terminated",
            True,
            True,
            id="ollama-error500",
        ),
        pytest.param(
            CLAUDE,
            "overloaded",
            "anthropic answered HTTP 529",
            "Overloaded",
            True,
            True,
            id="claude-overloaded",
        ),
        pytest.param(
            CLAUDE,
            "unauthorized",
            "anthropic answered HTTP 401",
            "invalid x-api-key",
            False,
            True,
            id="claude-unauthorized",
        ),
    ],
)
async def test_status_error_over_the_wire(
    session: aiohttp.ClientSession,
    spec: Upstream,
    fake: Any,
    answer: str,
    message: str,
    detail: str,
    failover: bool,
    marks_down: bool,
) -> None:
    setattr(fake.fake, spec.knob, answer)
    with capture_logs() as logs:
        chunks, error = await collect_error(spec.adapter(session, fake.url))
    assert chunks == []
    assert str(error) == message
    assert (error.kind, error.failover, error.marks_down) == ("status", failover, marks_down)
    (logged,) = [e for e in logs if e["event"] == "upstream_status"]
    assert detail[:200] in logged["detail"]


# --- 200 answers that are not a whole stream (aioresponses) ----------------------------------


async def test_garbage_200(
    mock: aioresponses, session: aiohttp.ClientSession, spec: Upstream
) -> None:
    """A proxy's HTML page with status 200: a broken stream, never an empty answer."""
    mock.post(spec.url, body=PAGE, headers={"Content-Type": "text/html"})
    chunks, error = await collect_error(spec.adapter(session, BASE))
    assert chunks == []
    assert str(error) == spec.garbage
    assert "proxy error" not in str(error)  # what the upstream sent is not repeated
    assert (error.kind, error.failover, error.marks_down) == ("protocol", True, True)


@pytest.mark.parametrize(
    "items", [pytest.param(0, id="empty-body"), pytest.param(1, id="after-the-first-text")]
)
async def test_stream_ended_before_the_end_marker(
    mock: aioresponses, session: aiohttp.ClientSession, spec: Upstream, items: int
) -> None:
    mock.post(spec.url, body=spec.first * items, headers={"Content-Type": spec.content_type})
    finish = Finish()
    chunks: list[str] = []
    with pytest.raises(UpstreamError) as info:
        async for chunk in spec.adapter(session, BASE).stream(CHAT, finish):
            chunks.append(chunk)
    assert chunks == list(spec.chunks[:items])
    assert str(info.value) == spec.ended_early
    assert (info.value.kind, info.value.failover, info.value.marks_down) == ("protocol", True, True)
    assert not finish.ended


async def test_stream_line_too_long(
    mock: aioresponses, session: aiohttp.ClientSession, spec: Upstream
) -> None:
    """The text before the long line still arrives; the line is refused, not buffered."""
    mock.post(
        spec.url, body=spec.first + spec.long_line, headers={"Content-Type": spec.content_type}
    )
    # The limit: above the first line (llama-server's is about 270 bytes), below the long one.
    chunks, error = await collect_error(spec.adapter(session, BASE, max_line_bytes=400))
    assert chunks == [spec.chunks[0]]
    assert str(error) == "upstream line too long"
    assert (error.kind, error.marks_down) == ("protocol", False)


# --- failures over the wire ------------------------------------------------------------------


async def test_stream_unreachable(session: aiohttp.ClientSession, spec: Upstream) -> None:
    url = closed_port_url()
    with capture_logs() as logs:
        chunks, error = await collect_error(spec.adapter(session, url))
    assert chunks == []
    # The class of failure only: no address, no OS error text (those are for the log).
    assert str(error) == f"{spec.upstream} unreachable"
    assert (error.kind, error.failover, error.marks_down) == ("connect", True, True)
    (logged,) = [e for e in logs if e["event"] == "upstream_unreachable"]
    assert (logged["log_level"], logged["upstream"]) == ("debug", spec.upstream)
    assert url.rsplit(":", 1)[1] in logged["detail"]  # the port, for whoever reads the log


async def test_stream_mid_stream_error(
    session: aiohttp.ClientSession, spec: Upstream, fake: Any
) -> None:
    """The upstream's own in-band error after some text (llama-server's current dialect;
    b5050's is in test_llamacpp)."""
    fake.fake.mid_stream_error = True
    with capture_logs() as logs:
        chunks, error = await collect_error(spec.adapter(session, fake.url))
    expected = spec.mid_stream
    assert chunks == list(spec.chunks[: expected.chunks])
    assert str(error) == expected.message
    assert expected.detail not in str(error)
    (logged,) = [e for e in logs if e["event"] == "upstream_reported_error"]
    assert (logged["log_level"], logged["upstream"]) == ("debug", spec.upstream)
    assert expected.detail in logged["detail"]
    assert (error.kind, error.failover, error.marks_down) == (
        "status",
        expected.failover,
        expected.marks_down,
    )


CUTS = [
    pytest.param(LLAMACPP, 1, id="llamacpp-after-the-first-text"),
    pytest.param(LLAMACPP, 2, id="llamacpp-mid-answer"),
    pytest.param(LLAMACPP, 4, id="llamacpp-late"),
    pytest.param(LLAMACPP, 6, id="llamacpp-after-the-finish-before-done"),
    pytest.param(OLLAMA, 1, id="ollama-after-the-first-text"),
    pytest.param(OLLAMA, 3, id="ollama-mid-answer"),
    pytest.param(OLLAMA, len(WORDS), id="ollama-before-done"),
    pytest.param(CLAUDE, 2, id="claude-in-the-preamble"),
    pytest.param(CLAUDE, 5, id="claude-mid-answer"),
    pytest.param(CLAUDE, 3 + len(WORDS) + 2, id="claude-after-message-delta-before-stop"),
]


@pytest.mark.parametrize(("spec", "cut_after"), CUTS)
async def test_stream_cut(
    session: aiohttp.ClientSession, spec: Upstream, fake: Any, cut_after: int
) -> None:
    """The connection drops after `cut_after` HTTP chunks of the fake's stream."""
    fake.fake.cut_after = cut_after
    fake.fake.gate = asyncio.Event()  # only waited for when the cut comes after the first text
    fake.fake.gate_after = spec.gate_after
    finish = Finish()
    stream = spec.adapter(session, fake.url).stream(CHAT, finish)
    chunks: list[str] = []
    with pytest.raises(UpstreamError) as info:
        if cut_after > spec.gate_after:
            chunks.append(await asyncio.wait_for(stream.__anext__(), 2))
            fake.fake.gate.set()
        async for chunk in stream:
            chunks.append(chunk)
    # aiohttp drops what it buffered when the cut arrives with it: a prefix, never more.
    assert chunks == list(spec.chunks[: len(chunks)])
    assert chunks or cut_after <= spec.gate_after
    assert str(info.value) == f"{spec.upstream} stream was cut"
    assert info.value.kind == "protocol"
    assert not finish.ended


# --- closing and cancelling close the upstream -----------------------------------------------


async def test_closing_the_stream_closes_the_upstream(
    session: aiohttp.ClientSession, spec: Upstream, fake: Any
) -> None:
    fake.fake.chunk_delay = 0.05
    finish = Finish()
    stream = spec.adapter(session, fake.url).stream(CHAT, finish)
    assert await stream.__anext__() == spec.chunks[0]
    await stream.aclose()
    await asyncio.wait_for(fake.fake.cancelled.wait(), 2)
    assert fake.fake.streams_completed == 0
    assert not finish.ended


@pytest.mark.parametrize("pace", ["gate", "delay"])
async def test_cancelling_the_consumer_closes_the_upstream(
    session: aiohttp.ClientSession, spec: Upstream, fake: Any, pace: str
) -> None:
    """Cancelled while the upstream holds its next chunk (gate) or is slow to send it."""
    if pace == "gate":
        fake.fake.gate = asyncio.Event()
        fake.fake.gate_after = spec.gate_after
    else:
        fake.fake.chunk_delay = 0.05
    await cancel_after_first_chunk(spec.adapter(session, fake.url).stream(CHAT, Finish()))
    if fake.fake.gate is not None:
        fake.fake.gate.set()  # the fake's next write now meets a closed connection
    await asyncio.wait_for(fake.fake.cancelled.wait(), 2)
    assert fake.fake.streams_completed == 0


async def test_cancelling_before_the_headers_closes_the_upstream(
    session: aiohttp.ClientSession, spec: Upstream, fake: Any
) -> None:
    """Cancelled while the upstream has the request and has not answered yet (a JSON
    answer waits there for its first byte as a stream does)."""
    spec.hang(fake.fake)
    task = asyncio.create_task(collect(spec.adapter(session, fake.url)))
    for _ in range(400):  # until the fake has the request (at most 2 s)
        if fake.fake.requests:
            break
        await asyncio.sleep(0.005)
    assert fake.fake.requests == [spec.body(spec.model)]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(fake.fake.cancelled.wait(), 2)
    assert fake.fake.streams_started == 0


# --- probes of the local upstreams -----------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "knob", "state", "expected"),
    [
        pytest.param(LLAMACPP, "health", "ready", ProbeResult(True), id="llamacpp-ready"),
        pytest.param(
            LLAMACPP,
            "health",
            "loading",
            ProbeResult(False, "llama-server loading model"),
            id="llamacpp-loading",
        ),
        pytest.param(OLLAMA, "state", "ok", ProbeResult(True), id="ollama-ok"),
        pytest.param(
            OLLAMA,
            "state",
            "missing_model",
            ProbeResult(False, "ollama model not found"),
            id="ollama-missing-model",
        ),
    ],
)
async def test_probe(
    session: aiohttp.ClientSession,
    spec: Upstream,
    fake: Any,
    knob: str,
    state: str,
    expected: ProbeResult,
) -> None:
    setattr(fake.fake, knob, state)
    assert await spec.adapter(session, fake.url).probe() == expected
    assert fake.fake.probes == 1


@pytest.mark.parametrize("spec", LOCAL, ids=ids)
async def test_probe_unreachable(session: aiohttp.ClientSession, spec: Upstream) -> None:
    result = await spec.adapter(session, closed_port_url()).probe()
    assert result == ProbeResult(False, f"{spec.upstream} unreachable")


@pytest.mark.parametrize("spec", LOCAL, ids=ids)
async def test_probe_after_the_server_went_away(
    session: aiohttp.ClientSession, spec: Upstream, fake: Any
) -> None:
    adapter = spec.adapter(session, fake.url)
    assert (await adapter.probe()).available
    await fake.stop()
    assert await adapter.probe() == ProbeResult(False, f"{spec.upstream} unreachable")
    await fake.restart()
    assert (await adapter.probe()).available
