"""Upstreams that misbehave: each ends in a clear error (or a failover), never a hang."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from captures import load
from helpers import CPU, GPU, collect_events, routable

ROLE = load("chat-stream.http").events()[0]
FINISH = load("chat-stream.http").events()[-2]
DONE = b"data: [DONE]\n\n"


def content(text: str) -> bytes:
    chunk = {"choices": [{"finish_reason": None, "index": 0, "delta": {"content": text}}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


async def events_of(client: Any) -> list[Any]:
    return await collect_events(str(client.make_url("/api/polish")), {"text": "x", "stream": True})


async def test_line_of_10_mb_is_cut_and_fails_over(llama: Any, ollama: Any, pollex: Any) -> None:
    huge = b"data: " + b"x" * (10 * 1024 * 1024)
    llama.fake.stream_chunks = [huge[i : i + 65536] for i in range(0, len(huge), 65536)]
    client = await pollex(
        llamacpp_url=llama.url,
        llamacpp_model=GPU,
        ollama_url=ollama.url,
        max_upstream_line_bytes=256 * 1024,
    )

    resp = await client.post("/api/polish", json={"text": "x"})

    body = await resp.json()
    assert (resp.status, body["provider"], body["fallback_from"]) == (200, "ollama", GPU)
    assert llama.fake.streams_completed == 0  # pollex hung up instead of buffering 10 MB


async def test_line_too_long_alone_is_a_clear_error(llama: Any, pollex: Any) -> None:
    llama.fake.stream_chunks = [ROLE, content("ok"), b"data: " + b"x" * 300_000]
    client = await pollex(llamacpp_url=llama.url, max_upstream_line_bytes=100_000)

    events = await events_of(client)

    assert [e.event for e in events] == ["start", "delta", "error"]
    assert events[-1].data == {"error": "upstream line too long", "status": 502}


async def test_stream_that_never_sends_done_times_out(llama: Any, pollex: Any) -> None:
    llama.fake.stream_chunks = [ROLE, content("I"), content(" went"), FINISH, DONE]
    llama.fake.gate = asyncio.Event()  # never set: silence after the finish chunk
    llama.fake.gate_after = 4
    client = await pollex(llamacpp_url=llama.url, idle_timeout_s=0.2)

    events = await events_of(client)

    assert [e.event for e in events] == ["start", "delta", "delta", "error"]
    assert events[-1].data == {"error": "upstream stopped sending output", "status": 504}
    assert not routable(client, "llama.cpp")


async def test_byte_drip_is_ended_by_the_idle_timeout(llama: Any, pollex: Any) -> None:
    body = ROLE + content("I went") + FINISH + DONE
    llama.fake.stream_chunks = [body[i : i + 1] for i in range(len(body))]
    llama.fake.chunk_delay = 0.01
    client = await pollex(llamacpp_url=llama.url, idle_timeout_s=0.3, first_token_timeout_s=0.3)

    resp = await client.post("/api/polish", json={"text": "x", "stream": True})

    # No first token in time, then no backend left: before the SSE headers went out
    # (they wait for the first event), so an HTTP 503.
    assert resp.status == 503
    assert (await resp.json())["error"].startswith("no backend could serve the request")


async def test_steady_but_endless_stream_hits_the_stream_timeout(llama: Any, pollex: Any) -> None:
    llama.fake.stream_chunks = [ROLE] + [content(" word")] * 1000
    llama.fake.chunk_delay = 0.02
    client = await pollex(llamacpp_url=llama.url, idle_timeout_s=1, stream_timeout_s=0.4)

    events = await events_of(client)

    assert events[-1].event == "error"
    assert events[-1].data == {"error": "stream timeout", "status": 504}
    assert 5 < len(events) < 100
    await asyncio.wait_for(llama.fake.cancelled.wait(), 2)


async def test_endless_output_is_cut_at_max_output_chars(llama: Any, pollex: Any) -> None:
    llama.fake.stream_chunks = [ROLE] + [content("0123456789")] * 1000
    client = await pollex(llamacpp_url=llama.url, max_output_chars=100)

    events = await events_of(client)

    assert [e.event for e in events].count("delta") == 10
    assert events[-1].data == {"error": "output too long", "status": 502}
    assert routable(client, "llama.cpp")  # a talkative model is not a dead one


@pytest.mark.parametrize(
    "bad",
    [
        b'data: {"error":{"code":500,"message":"KV cache full","type":"server_error"}}\n\n',
        b"data: {this is not json\n\n",
        b"data: [1, 2, 3]\n\n",
    ],
)
async def test_bad_first_chunk_fails_over(llama: Any, ollama: Any, pollex: Any, bad: bytes) -> None:
    llama.fake.stream_chunks = [bad]
    client = await pollex(llamacpp_url=llama.url, llamacpp_model=GPU, ollama_url=ollama.url)

    resp = await client.post("/api/polish", json={"text": "x"})

    body = await resp.json()
    assert (resp.status, body["provider"]) == (200, "ollama")


async def test_error_object_inside_a_200_reports_that_it_failed(llama: Any, pollex: Any) -> None:
    """The class of failure reaches the client; the upstream's own message does not (it may
    quote the text), nor does it reach /api/health."""
    llama.fake.stream_chunks = [
        b'data: {"error":{"code":500,"message":"KV cache full","type":"server_error"}}\n\n'
    ]
    client = await pollex(llamacpp_url=llama.url)

    resp = await client.post("/api/polish", json={"text": "x"})

    assert resp.status == 503
    assert (await resp.json())["error"] == (
        "no backend could serve the request (llama.cpp (llama.cpp): llama-server reported an error)"
    )
    assert "KV cache full" not in await (await client.get("/api/health")).text()


async def test_ollama_garbage_line_mid_stream(ollama: Any, pollex: Any) -> None:
    ollama.fake.words = ["I", " went", "\x00garbage"]
    client = await pollex(ollama_url=ollama.url)
    original = ollama.fake._line

    def line(text: str, **kwargs: Any) -> str:
        return "{not json" if text == "\x00garbage" else original(text, **kwargs)

    ollama.fake._line = line

    events = await events_of(client)

    assert [e.event for e in events] == ["start", "delta", "delta", "error"]
    assert events[-1].data["error"] == "malformed upstream stream"  # not what it sent
    assert not routable(client, CPU)


async def test_claude_overloaded_fails_over_and_marks_down(
    anthropic: Any, ollama: Any, pollex: Any
) -> None:
    anthropic.fake.state = "overloaded"
    client = await pollex(
        claude_api_key="sk-test",
        claude_url=anthropic.url,
        claude_model="claude-test",
        ollama_url=ollama.url,
        fallback=("claude", "ollama"),
    )

    resp = await client.post("/api/polish", json={"text": "x"})

    body = await resp.json()
    assert (body["provider"], body["fallback_from"]) == ("ollama", "claude-test")
    assert not routable(client, "claude-test")
    assert anthropic.fake.headers[0]["x-api-key"] == "sk-test"


async def test_claude_overloaded_mid_stream_is_an_error_event(anthropic: Any, pollex: Any) -> None:
    anthropic.fake.mid_stream_error = True
    client = await pollex(
        claude_api_key="sk-test", claude_url=anthropic.url, claude_model="claude-test"
    )

    events = await events_of(client)

    assert [e.event for e in events] == ["start", "delta", "delta", "error"]
    assert events[-1].data == {"error": "anthropic reported overloaded_error", "status": 502}
