"""LlamaCppAdapter: request shape (aioresponses), then the real captured traffic over sockets.

The fake replays tests/fixtures/llama-server byte for byte; the b5050 dialect (upstreams.md
§1.1) is the fake's `dialect="b5050"`. Nothing here sleeps for more than 50 ms.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from adapter_calls import CHAT, SYSTEM, TEXT, collect, collect_error
from aioresponses import aioresponses
from captures import load, wire_chunks
from fakes import closed_port_url
from yarl import URL

from pollex.adapters import Completion, Finish, ProbeResult, Usage
from pollex.adapters.llamacpp import LlamaCppAdapter
from pollex.errors import UpstreamError

BASE = "http://llama.test:8080"
CHAT_URL = URL(f"{BASE}/v1/chat/completions")
MODEL = "qwen2.5-1.5b-gpu"
# What the capture streams (chat-stream.http): the role-only first chunk yields nothing.
CAPTURED = ["i", " goes", " to", " store", " yesterday"]
CAPTURED_USAGE = Usage(52, 11, 85.65)  # cache_n 47 + prompt_n 5; predicted_n; predicted/s
WIRE = wire_chunks("chat-stream.wire.http")  # role+"i", " goes", …, finish, [DONE]
SSE = {"Content-Type": "text/event-stream"}
OOM = "llama-server: llama_decode failed: out of memory"


def body_of(capture: str) -> str:
    return load(capture).body.decode()


# --- identity --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "id", "name"),
    [
        ("", "llama.cpp", "llama.cpp (llama.cpp)"),
        (MODEL, MODEL, f"llama.cpp ({MODEL})"),
        ("qwen2.5:1.5b-gpu", "qwen2.5:1.5b-gpu", "llama.cpp (qwen2.5:1.5b-gpu)"),
    ],
)
async def test_identity(session: aiohttp.ClientSession, model: str, id: str, name: str) -> None:
    adapter = LlamaCppAdapter(session, BASE, model, first_token_timeout_s=7.5)
    assert (adapter.id, adapter.name, adapter.provider) == (id, name, "llamacpp")
    assert adapter.first_token_timeout_s == 7.5


# --- request shape (aioresponses) -----------------------------------------------------------


def expected_body(*, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TEXT}],
        "temperature": 0.0,
        "max_tokens": 64,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


@pytest.mark.parametrize("base", [BASE, BASE + "/"])
async def test_stream_request_shape(
    mock: aioresponses, session: aiohttp.ClientSession, base: str
) -> None:
    mock.post(str(CHAT_URL), body=load("chat-stream.http").body, headers=SSE)
    chunks, _ = await collect(LlamaCppAdapter(session, base, MODEL))
    [call] = mock.requests[("POST", CHAT_URL)]
    assert chunks == CAPTURED
    assert call.kwargs["json"] == expected_body(stream=True)


async def test_complete_request_shape_and_answer(
    mock: aioresponses, session: aiohttp.ClientSession
) -> None:
    mock.post(str(CHAT_URL), body=body_of("chat-stop.http"))
    result = await LlamaCppAdapter(session, BASE, MODEL).complete(CHAT)
    [call] = mock.requests[("POST", CHAT_URL)]
    assert call.kwargs["json"] == expected_body(stream=False)
    assert result == Completion(TEXT, Finish("stop", Usage(52, 11, 96.1)))


@pytest.mark.parametrize(
    ("capture", "reason"), [("chat-max-tokens.http", "length"), ("chat-stop.http", "stop")]
)
async def test_complete_finish_reason(
    mock: aioresponses, session: aiohttp.ClientSession, capture: str, reason: str
) -> None:
    mock.post(str(CHAT_URL), body=body_of(capture))
    result = await LlamaCppAdapter(session, BASE, MODEL).complete(CHAT)
    assert result.text
    assert result.finish.reason == reason


# --- non-200 answers -------------------------------------------------------------------------

LOADING = body_of("chat-while-loading.http")
NOT_JSON = body_of("error-not-json.http")
CONTEXT = body_of("error-context-exceeded.http")
NO_MESSAGES = body_of("error-no-messages.http")


def oai_error(status: int, message: str, kind: str) -> str:
    return json.dumps({"error": {"code": status, "message": message, "type": kind}})


@pytest.mark.parametrize(
    ("status", "body", "message", "failover", "marks_down"),
    [
        pytest.param(503, LOADING, "Loading model", True, True, id="503-loading"),
        pytest.param(500, NOT_JSON, "[json.exception.parse_error.101] parse error", True, True),
        pytest.param(
            400, CONTEXT, "request (12047 tokens) exceeds the available context", True, False
        ),
        pytest.param(400, NO_MESSAGES, "'messages' is required", False, False, id="400"),
        pytest.param(
            401,
            oai_error(401, "Invalid API Key", "authentication_error"),
            "Invalid API Key",
            True,
            True,
            id="401",
        ),
        pytest.param(
            404,
            oai_error(404, "File Not Found", "not_found_error"),
            "File Not Found",
            True,
            True,
            id="404",
        ),
        pytest.param(
            502,
            "<html><body><h1>502 Bad Gateway</h1></body></html>",
            "502 Bad Gateway",
            True,
            True,
            id="html-from-a-proxy",
        ),
        pytest.param(400, '{"error": "plain string"}', "plain string", False, False),
        pytest.param(400, '{"error": null}', '{"error": null}', False, False, id="null-error"),
        pytest.param(400, "[1, 2]", "[1, 2]", False, False, id="json-list"),
        pytest.param(500, "", "empty error body", True, True, id="empty"),
    ],
)
@pytest.mark.parametrize("mode", ["stream", "complete"])
async def test_status_error(
    mock: aioresponses,
    session: aiohttp.ClientSession,
    mode: str,
    status: int,
    body: str,
    message: str,
    failover: bool,
    marks_down: bool,
) -> None:
    adapter = LlamaCppAdapter(session, BASE, MODEL)
    mock.post(str(CHAT_URL), status=status, body=body)
    with pytest.raises(UpstreamError) as info:
        if mode == "stream":
            await collect(adapter)
        else:
            await adapter.complete(CHAT)
    error = info.value
    assert message in str(error)
    assert str(error).startswith("llama-server: ")
    assert str(error).endswith(f"(HTTP {status})")
    assert (error.kind, error.failover, error.marks_down) == ("status", failover, marks_down)


@pytest.mark.parametrize(
    ("knob", "status", "failover", "marks_down"),
    [
        ("loading", 503, True, True),
        ("error500", 500, True, True),
        ("context", 400, True, False),
        ("bad_request", 400, False, False),
    ],
)
@pytest.mark.parametrize("mode", ["stream", "complete"])
async def test_status_error_over_the_wire(
    session: aiohttp.ClientSession,
    llama: Any,
    mode: str,
    knob: str,
    status: int,
    failover: bool,
    marks_down: bool,
) -> None:
    llama.fake.chat = knob
    adapter = LlamaCppAdapter(session, llama.url, MODEL)
    with pytest.raises(UpstreamError) as info:
        if mode == "stream":
            await collect(adapter)
        else:
            await adapter.complete(CHAT)
    assert f"(HTTP {status})" in str(info.value)
    assert (info.value.failover, info.value.marks_down) == (failover, marks_down)


# --- malformed 200 answers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param("<html>proxy error</html>", "not JSON", id="html"),
        pytest.param('{"choices": [', "not JSON", id="truncated-json"),
        pytest.param("[]", "not an object", id="json-list"),
        pytest.param('{"choices": []}', "no choices", id="empty-choices"),
        pytest.param("{}", "no choices", id="no-choices"),
        pytest.param('{"choices": [{"index": 0}]}', "no choices", id="no-message"),
        pytest.param('{"choices": ["x"]}', "no choices", id="choice-not-object"),
        pytest.param(
            '{"choices": [{"message": {"content": ""}, "finish_reason": "stop"}]}',
            "empty content",
            id="empty-content",
        ),
        pytest.param(
            '{"choices": [{"message": {"content": null}, "finish_reason": "stop"}]}',
            "empty content",
            id="null-content",
        ),
    ],
)
async def test_complete_malformed(
    mock: aioresponses, session: aiohttp.ClientSession, body: str, message: str
) -> None:
    mock.post(str(CHAT_URL), body=body)
    with pytest.raises(UpstreamError) as info:
        await LlamaCppAdapter(session, BASE, MODEL).complete(CHAT)
    assert info.value.kind == "protocol"
    assert message in str(info.value)


async def test_complete_error_object_in_a_200(
    mock: aioresponses, session: aiohttp.ClientSession
) -> None:
    mock.post(str(CHAT_URL), body=oai_error(500, "boom", "server_error"))
    with pytest.raises(UpstreamError) as info:
        await LlamaCppAdapter(session, BASE, MODEL).complete(CHAT)
    assert str(info.value) == "llama-server: boom"


async def test_complete_garbage_over_the_wire(session: aiohttp.ClientSession, llama: Any) -> None:
    llama.fake.chat = "garbage"
    with pytest.raises(UpstreamError) as info:
        await LlamaCppAdapter(session, llama.url, MODEL).complete(CHAT)
    assert info.value.kind == "protocol"


async def test_complete_answer_too_large(
    mock: aioresponses, session: aiohttp.ClientSession
) -> None:
    mock.post(str(CHAT_URL), body=body_of("chat-stop.http"))
    with pytest.raises(UpstreamError, match="too large") as info:
        await LlamaCppAdapter(session, BASE, MODEL, max_line_bytes=100).complete(CHAT)
    assert (info.value.kind, info.value.marks_down) == ("protocol", False)


# --- probe -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("health", "expected"),
    [
        ("ready", ProbeResult(True)),
        ("loading", ProbeResult(False, "llama-server loading model")),
    ],
)
async def test_probe(
    session: aiohttp.ClientSession, llama: Any, health: str, expected: ProbeResult
) -> None:
    llama.fake.health = health
    assert await LlamaCppAdapter(session, llama.url, MODEL).probe() == expected
    assert llama.fake.probes == 1


async def test_probe_unreachable(session: aiohttp.ClientSession) -> None:
    result = await LlamaCppAdapter(session, closed_port_url(), MODEL).probe()
    assert result == ProbeResult(False, "llama-server unreachable")


async def test_probe_after_the_server_went_away(session: aiohttp.ClientSession, llama: Any) -> None:
    adapter = LlamaCppAdapter(session, llama.url, MODEL)
    assert (await adapter.probe()).available
    await llama.stop()
    assert await adapter.probe() == ProbeResult(False, "llama-server unreachable")
    await llama.restart()
    assert (await adapter.probe()).available


async def test_probe_other_status(mock: aioresponses, session: aiohttp.ClientSession) -> None:
    mock.get(f"{BASE}/health", status=500, body="oops")
    result = await LlamaCppAdapter(session, BASE, MODEL).probe()
    assert result == ProbeResult(False, "llama-server /health answered HTTP 500")


# --- streaming over the wire -----------------------------------------------------------------


async def test_stream_replays_the_capture(session: aiohttp.ClientSession, llama: Any) -> None:
    chunks, finish = await collect(LlamaCppAdapter(session, llama.url, MODEL))
    assert chunks == CAPTURED
    assert finish == Finish("stop", CAPTURED_USAGE)
    assert llama.fake.requests[0] == expected_body(stream=True)
    assert llama.fake.streams_completed == 1


async def test_stream_is_not_buffered(session: aiohttp.ClientSession, llama: Any) -> None:
    llama.fake.gate = asyncio.Event()  # holds everything after the first HTTP chunk
    finish = Finish()
    stream = LlamaCppAdapter(session, llama.url, MODEL).stream(CHAT, finish)
    first = await asyncio.wait_for(stream.__anext__(), 2)
    assert first == "i"
    assert not llama.fake.gate.is_set()
    assert finish.reason is None
    llama.fake.gate.set()
    assert [first] + [chunk async for chunk in stream] == CAPTURED
    assert finish.reason == "stop"


def b5050_final() -> bytes:
    """b5050's last chunk: finish_reason, usage and timings together (no include_usage)."""
    chunk = {
        "choices": [{"finish_reason": "length", "index": 0, "delta": {}}],
        "object": "chat.completion.chunk",
        "usage": {"completion_tokens": 64, "prompt_tokens": 40, "total_tokens": 104},
        "timings": {"prompt_n": 40, "predicted_n": 64, "predicted_per_second": 21.456},
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def events(capture: str) -> list[bytes]:
    return load(capture).events()


@pytest.mark.parametrize(
    ("chunks", "text", "finish"),
    [
        pytest.param(WIRE, CAPTURED, Finish("stop", CAPTURED_USAGE), id="wire"),
        pytest.param(
            events("chat-stream-usage.http"),
            CAPTURED,
            Finish("stop", Usage(52, 11, 86.59)),
            id="include-usage-extra-chunk",
        ),
        pytest.param(
            events("chat-stream-max-tokens.http"),
            None,
            Finish("length", Usage(52, 8, 65.79)),
            id="max-tokens",
        ),
        pytest.param(
            [*WIRE[:5], b5050_final(), WIRE[-1]],
            CAPTURED,
            Finish("length", Usage(40, 64, 21.46)),
            id="b5050-final-chunk",
        ),
        pytest.param(
            [*WIRE[:5], WIRE[5].replace(b',"timings"', b',"x"'), WIRE[-1]],
            CAPTURED,
            Finish("stop", None),
            id="no-usage",
        ),
    ],
)
async def test_stream_finish(
    session: aiohttp.ClientSession,
    llama: Any,
    chunks: list[bytes],
    text: list[str] | None,
    finish: Finish,
) -> None:
    llama.fake.stream_chunks = chunks
    got, got_finish = await collect(LlamaCppAdapter(session, llama.url, MODEL))
    if text is not None:
        assert got == text
    assert got and all(got)
    assert got_finish == finish


def crlf(data: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")


def lone_cr(data: bytes) -> bytes:
    return data.replace(b"\n", b"\r")


def with_comments(data: bytes) -> bytes:
    """llama-server's keep-alive (`:` then a blank line) between and inside events."""
    return b":\n\n" + data.replace(b"\n\n", b"\n: ping\n\n:\n\n")


def one_byte_each(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


Transform = Callable[[bytes], list[bytes]]


@pytest.mark.parametrize(
    "transform",
    [
        pytest.param(lambda body: [crlf(body)], id="CRLF"),
        pytest.param(lambda body: [lone_cr(body)], id="CR"),
        pytest.param(lambda body: [with_comments(body)], id="comments"),
        pytest.param(lambda body: one_byte_each(crlf(with_comments(body))), id="bytewise-CRLF"),
        pytest.param(lambda body: [b"\xef\xbb\xbf" + body], id="BOM"),
        pytest.param(lambda body: [body], id="one-chunk"),
        pytest.param(lambda body: [body[i : i + 7] for i in range(0, len(body), 7)], id="7-bytes"),
    ],
)
async def test_stream_framing_variants(
    session: aiohttp.ClientSession, llama: Any, transform: Transform
) -> None:
    llama.fake.stream_chunks = transform(load("chat-stream.http").body)
    chunks, finish = await collect(LlamaCppAdapter(session, llama.url, MODEL))
    assert chunks == CAPTURED
    assert finish == Finish("stop", CAPTURED_USAGE)


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        pytest.param([*WIRE[:5], WIRE[-1]], "[DONE] without a finish_reason", id="no-finish"),
        pytest.param(WIRE[:-1], "ended before [DONE]", id="eof-after-finish"),
        pytest.param(WIRE[:3], "ended before [DONE]", id="eof-mid-answer"),
        pytest.param([*WIRE[:3], b"data: [DONE]"], "ended before [DONE]", id="unterminated-done"),
        pytest.param([*WIRE[:3], b"data: {not json\n\n"], "not JSON", id="garbage-chunk"),
        pytest.param([*WIRE[:3], b"data: [1]\n\n", *WIRE[3:]], "not an object", id="json-list"),
        pytest.param([b"<html>proxy error</html>"], "ended before [DONE]", id="html"),
    ],
)
async def test_stream_protocol_errors(
    session: aiohttp.ClientSession, llama: Any, chunks: list[bytes], message: str
) -> None:
    llama.fake.stream_chunks = chunks
    _, error = await collect_error(LlamaCppAdapter(session, llama.url, MODEL))
    assert error.kind == "protocol"
    assert message in str(error)


@pytest.mark.parametrize("cut_after", [1, 2, 4, 6])
async def test_stream_cut(session: aiohttp.ClientSession, llama: Any, cut_after: int) -> None:
    """The connection drops mid-answer (6: after the finish chunk, before [DONE])."""
    llama.fake.cut_after = cut_after
    llama.fake.gate = asyncio.Event()  # only waited for when the cut comes later
    stream = LlamaCppAdapter(session, llama.url, MODEL).stream(CHAT, Finish())
    chunks: list[str] = []
    with pytest.raises(UpstreamError) as info:
        if cut_after > 1:
            chunks.append(await asyncio.wait_for(stream.__anext__(), 2))
            llama.fake.gate.set()
        async for chunk in stream:
            chunks.append(chunk)
    # aiohttp drops what it buffered when the cut arrives with it: a prefix, never more.
    assert chunks == CAPTURED[: len(chunks)]
    assert chunks or cut_after == 1
    assert info.value.kind == "protocol"
    assert "cut" in str(info.value)


async def test_stream_garbage_over_the_wire(session: aiohttp.ClientSession, llama: Any) -> None:
    llama.fake.chat = "garbage"  # a 200 text/html page from a proxy
    chunks, error = await collect_error(LlamaCppAdapter(session, llama.url, MODEL))
    assert (chunks, error.kind) == ([], "protocol")


async def test_stream_line_too_long(session: aiohttp.ClientSession, llama: Any) -> None:
    llama.fake.stream_chunks = [WIRE[0], b"data: " + b"x" * 300, b"x" * 300]
    llama.fake.gate = asyncio.Event()
    stream = LlamaCppAdapter(session, llama.url, MODEL, max_line_bytes=512).stream(CHAT, Finish())
    assert await asyncio.wait_for(stream.__anext__(), 2) == "i"
    llama.fake.gate.set()
    with pytest.raises(UpstreamError) as info:
        await stream.__anext__()
    assert (info.value.kind, info.value.marks_down) == ("protocol", False)
    assert "too long" in str(info.value)


@pytest.mark.parametrize("dialect", ["b5050", "current"])
async def test_stream_mid_stream_error(
    session: aiohttp.ClientSession, llama: Any, dialect: str
) -> None:
    llama.fake.dialect = dialect
    llama.fake.mid_stream_error = True
    chunks, error = await collect_error(LlamaCppAdapter(session, llama.url, MODEL))
    assert chunks == CAPTURED[:3]
    assert str(error) == OOM
    assert (error.kind, error.marks_down) == ("status", False)


async def test_stream_b5050_error_line_is_not_swallowed_by_done(
    session: aiohttp.ClientSession, llama: Any
) -> None:
    """Even after a finish chunk, b5050's `error:` line must not pass as a clean end."""
    error = b'error: {"code":500,"message":"boom","type":"server_error"}\n\n'
    llama.fake.stream_chunks = [*WIRE[:-1], error, WIRE[-1]]
    _, failure = await collect_error(LlamaCppAdapter(session, llama.url, MODEL))
    assert str(failure) == "llama-server: boom"


# --- cancellation ----------------------------------------------------------------------------


async def test_closing_the_stream_closes_the_upstream(
    session: aiohttp.ClientSession, llama: Any
) -> None:
    llama.fake.chunk_delay = 0.05
    stream = LlamaCppAdapter(session, llama.url, MODEL).stream(CHAT, Finish())
    assert await stream.__anext__() == "i"
    await stream.aclose()
    await asyncio.wait_for(llama.fake.cancelled.wait(), 2)
    assert llama.fake.streams_completed == 0


async def test_cancelling_the_consumer_closes_the_upstream(
    session: aiohttp.ClientSession, llama: Any
) -> None:
    llama.fake.gate = asyncio.Event()
    got_first = asyncio.Event()

    async def consume() -> None:
        async for _ in LlamaCppAdapter(session, llama.url, MODEL).stream(CHAT, Finish()):
            got_first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_first.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    llama.fake.gate.set()  # the fake's next write now meets a closed connection
    await asyncio.wait_for(llama.fake.cancelled.wait(), 2)
    assert llama.fake.streams_completed == 0


async def test_complete_over_the_wire(session: aiohttp.ClientSession, llama: Any) -> None:
    result = await LlamaCppAdapter(session, llama.url, MODEL).complete(CHAT)
    assert result.text == TEXT
    assert result.finish.reason == "stop"
    assert llama.fake.requests[0] == expected_body(stream=False)


async def test_cancelling_complete_closes_the_upstream(
    session: aiohttp.ClientSession, llama: Any
) -> None:
    llama.fake.chat = "hang"  # accepts the request, never answers
    task = asyncio.create_task(LlamaCppAdapter(session, llama.url, MODEL).complete(CHAT))
    for _ in range(400):  # until the fake has the request (at most 2 s)
        if llama.fake.requests:
            break
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(llama.fake.cancelled.wait(), 2)
