"""LlamaCppAdapter's own dialect: the real captured traffic over sockets, and b5050.

The fake replays tests/fixtures/llama-server byte for byte; the b5050 dialect
(docs/upstreams.md) is the fake's `dialect="b5050"`. What every HTTP adapter does the
same way (request, status errors, cuts, cancellation, probes) is in test_http_adapters.py.
Nothing here sleeps for more than 50 ms.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from captures import load, wire_chunks
from helpers import CHAT, collect, collect_error, llamacpp
from structlog.testing import capture_logs

from pollex.adapters import Finish, ProbeResult, Usage
from pollex.adapters.llamacpp import LlamaCppAdapter
from pollex.errors import UpstreamError

BASE = "http://llama.test:8080"
MODEL = "qwen2.5-1.5b-gpu"
# What the capture streams (chat-stream.http): the role-only first chunk yields nothing.
CAPTURED = ["i", " goes", " to", " store", " yesterday"]
CAPTURED_USAGE = Usage(52, 11, 85.65)  # cache_n 47 + prompt_n 5; predicted_n; predicted/s
WIRE = wire_chunks("chat-stream.wire.http")  # role+"i", " goes", …, finish, [DONE]
OOM = "llama_decode failed: out of memory"  # the fake's in-band error message


def adapter(session: aiohttp.ClientSession, url: str, **limits: Any) -> LlamaCppAdapter:
    return llamacpp(session, url, MODEL, **limits)


# --- probe -----------------------------------------------------------------------------------


async def test_probe_other_status(mock: aioresponses, session: aiohttp.ClientSession) -> None:
    mock.get(f"{BASE}/health", status=500, body="oops")
    result = await adapter(session, BASE).probe()
    assert result == ProbeResult(False, "llama-server /health answered HTTP 500")


# --- how a stream ends -----------------------------------------------------------------------


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
        pytest.param(WIRE, CAPTURED, Finish("stop", CAPTURED_USAGE, ended=True), id="wire"),
        pytest.param(
            events("chat-stream-usage.http"),
            CAPTURED,
            Finish("stop", Usage(52, 11, 86.59), ended=True),
            id="include-usage-extra-chunk",
        ),
        pytest.param(
            events("chat-stream-max-tokens.http"),
            None,
            Finish("length", Usage(52, 8, 65.79), ended=True),
            id="max-tokens",
        ),
        pytest.param(
            [*WIRE[:5], b5050_final(), WIRE[-1]],
            CAPTURED,
            Finish("length", Usage(40, 64, 21.46), ended=True),
            id="b5050-final-chunk",
        ),
        pytest.param(
            [*WIRE[:5], WIRE[5].replace(b',"timings"', b',"x"'), WIRE[-1]],
            CAPTURED,
            Finish("stop", None, ended=True),
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
    got, got_finish = await collect(adapter(session, llama.url))
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
    chunks, finish = await collect(adapter(session, llama.url))
    assert chunks == CAPTURED
    assert finish == Finish("stop", CAPTURED_USAGE, ended=True)


@pytest.mark.parametrize(
    ("chunks", "before", "message"),
    [
        pytest.param(
            [*WIRE[:5], WIRE[-1]],
            CAPTURED,
            "llama-server sent [DONE] without a finish_reason",
            id="no-finish",
        ),
        pytest.param(
            WIRE[:-1], CAPTURED, "llama-server stream ended before [DONE]", id="eof-after-finish"
        ),
        pytest.param(
            [*WIRE[:3], b"data: [DONE]"],
            CAPTURED[:3],
            "llama-server stream ended before [DONE]",
            id="unterminated-done",
        ),
        pytest.param(
            [*WIRE[:3], b"data: {not json\n\n"],
            CAPTURED[:3],
            "llama-server sent a chunk that is not JSON",
            id="garbage-chunk",
        ),
        pytest.param(
            [*WIRE[:3], b"data: [1]\n\n", *WIRE[3:]],
            CAPTURED[:3],
            "llama-server sent JSON that is not an object",
            id="json-list",
        ),
    ],
)
async def test_stream_protocol_errors(
    session: aiohttp.ClientSession,
    llama: Any,
    chunks: list[bytes],
    before: list[str],
    message: str,
) -> None:
    llama.fake.stream_chunks = chunks
    got, error = await collect_error(adapter(session, llama.url))
    # aiohttp may hand over the good chunks and the bad one in one read: a prefix.
    assert got == before[: len(got)]
    assert error.kind == "protocol"
    assert str(error) == message


async def test_stream_garbage_over_the_wire(session: aiohttp.ClientSession, llama: Any) -> None:
    llama.fake.chat = "garbage"  # a 200 text/html page from a proxy
    chunks, error = await collect_error(adapter(session, llama.url))
    assert (chunks, error.kind) == ([], "protocol")
    assert str(error) == "llama-server stream ended before [DONE]"


async def test_stream_line_too_long_in_a_later_read(
    session: aiohttp.ClientSession, llama: Any
) -> None:
    """The line grows past the limit across reads (test_http_adapters has it in one read)."""
    llama.fake.stream_chunks = [WIRE[0], b"data: " + b"x" * 300, b"x" * 300]
    llama.fake.gate = asyncio.Event()
    stream = adapter(session, llama.url, max_line_bytes=512).stream(CHAT, Finish())
    assert await asyncio.wait_for(stream.__anext__(), 2) == "i"
    llama.fake.gate.set()
    with pytest.raises(UpstreamError) as info:
        await stream.__anext__()
    assert (info.value.kind, info.value.marks_down) == ("protocol", False)
    assert str(info.value) == "upstream line too long"


# --- b5050's mid-stream error (the current dialect's is in test_http_adapters) ---------------


async def test_stream_b5050_mid_stream_error(session: aiohttp.ClientSession, llama: Any) -> None:
    """b5050 sends `error: {...}` and then `data: [DONE]`: still a failure."""
    llama.fake.dialect = "b5050"
    llama.fake.mid_stream_error = True
    with capture_logs() as logs:
        chunks, error = await collect_error(adapter(session, llama.url))
    assert chunks == CAPTURED[:3]
    assert str(error) == "llama-server reported an error"  # its message is for the log only
    (reported,) = [e for e in logs if e["event"] == "upstream_reported_error"]
    assert reported["log_level"] == "debug"
    assert OOM in reported["detail"]
    assert (error.kind, error.failover, error.marks_down) == ("status", True, False)


async def test_stream_b5050_error_line_is_not_swallowed_by_done(
    session: aiohttp.ClientSession, llama: Any
) -> None:
    """Even after a finish chunk, b5050's `error:` line must not pass as a clean end."""
    error = b'error: {"code":500,"message":"boom","type":"server_error"}\n\n'
    llama.fake.stream_chunks = [*WIRE[:-1], error, WIRE[-1]]
    _, failure = await collect_error(adapter(session, llama.url))
    assert str(failure) == "llama-server reported an error"
    assert (failure.kind, failure.marks_down) == ("status", False)


async def test_stream_error_object_before_any_text(
    mock: aioresponses, session: aiohttp.ClientSession
) -> None:
    """The current dialect's `data: {"error": ...}` as the first event of a 200."""
    error = {"error": {"code": 500, "message": "boom", "type": "server_error"}}
    body = b"data: " + json.dumps(error).encode() + b"\n\n"
    mock.post(
        f"{BASE}/v1/chat/completions", body=body, headers={"Content-Type": "text/event-stream"}
    )
    with capture_logs() as logs:
        chunks, failure = await collect_error(adapter(session, BASE))
    assert (chunks, str(failure)) == ([], "llama-server reported an error")
    (reported,) = [e for e in logs if e["event"] == "upstream_reported_error"]
    assert "boom" in reported["detail"]
    assert (failure.kind, failure.marks_down) == ("status", False)
