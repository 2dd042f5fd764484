"""POST /api/polish end to end: pollex and a fake llama-server on real loopback sockets."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp
import pytest
from helpers import collect_events, sse_events, stream_until

from pollex.web.app import load_prompt

CAPTURED_TEXT = "i goes to store yesterday"  # what the captured llama-server stream says


async def test_json_polish_has_original_shape_plus_provider(llama: Any, pollex: Any) -> None:
    client = await pollex(llamacpp_url=llama.url, llamacpp_model="qwen2.5:1.5b-gpu")

    resp = await client.post("/api/polish", json={"text": "i goes to store  yesterday"})

    assert resp.status == 200
    body = await resp.json()
    assert body == {
        "polished": CAPTURED_TEXT,
        "model": "qwen2.5:1.5b-gpu",
        "elapsed_ms": body["elapsed_ms"],
        "provider": "llamacpp",
        "fallback_from": None,
    }
    assert isinstance(body["elapsed_ms"], int)
    sent = llama.fake.requests[0]
    assert sent["messages"] == [
        {"role": "system", "content": load_prompt("")},
        {"role": "user", "content": "i goes to store  yesterday"},
    ]
    assert sent["temperature"] == 0
    # Bounded by the text: 2 * ceil(26 chars / 3) + 64, well under max_output_tokens.
    assert sent["max_tokens"] == 82


async def test_sse_polish_events_in_order(llama: Any, pollex: Any) -> None:
    client = await pollex(llamacpp_url=llama.url, llamacpp_model="qwen2.5:1.5b-gpu")

    events = await collect_events(
        str(client.make_url("/api/polish")), {"text": "x", "stream": True}
    )

    assert [e.event for e in events] == ["start"] + ["delta"] * 5 + ["done"]
    start, *deltas, done = events
    assert re.fullmatch(r"[0-9a-f]{32}", start.data.pop("request_id"))
    assert start.data == {
        "model": "qwen2.5:1.5b-gpu",
        "provider": "llamacpp",
        "fallback_from": None,
    }
    assert [d.data["text"] for d in deltas] == ["i", " goes", " to", " store", " yesterday"]
    assert done.data["polished"] == CAPTURED_TEXT
    assert done.data["finish_reason"] == "stop"
    assert done.data["usage"] == {
        "prompt_tokens": 52,
        "completion_tokens": 11,
        "tokens_per_second": 85.65,
    }
    assert done.data["ttft_ms"] <= done.data["elapsed_ms"]


async def test_accept_header_selects_sse(llama: Any, pollex: Any) -> None:
    client = await pollex(llamacpp_url=llama.url)

    resp = await client.post(
        "/api/polish", json={"text": "x"}, headers={"Accept": "text/event-stream"}
    )

    assert resp.headers["Content-Type"] == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["X-Accel-Buffering"] == "no"
    assert b"event: done" in await resp.read()


async def test_each_chunk_is_forwarded_before_the_next_exists(llama: Any, pollex: Any) -> None:
    llama.fake.gate = asyncio.Event()
    llama.fake.gate_after = 2  # the first two wire chunks: role + "i", then " goes"
    client = await pollex(llamacpp_url=llama.url)
    url = str(client.make_url("/api/polish"))

    seen: list[str] = []
    async for event in sse_events(url, {"text": "x", "stream": True}):
        seen.append(event.event)
        if event.event == "delta" and len(seen) == 2:
            assert event.data == {"text": "i"}
            assert not llama.fake.gate.is_set()
            llama.fake.gate.set()
    assert seen[-1] == "done"


async def test_keepalive_comments_while_upstream_is_silent(llama: Any, pollex: Any) -> None:
    llama.fake.gate = asyncio.Event()
    client = await pollex(llamacpp_url=llama.url, keepalive_s=0.05)

    async with client.post("/api/polish", json={"text": "x", "stream": True}) as resp:
        received = b""
        while received.count(b": keep-alive\n\n") < 2:
            received += await asyncio.wait_for(resp.content.readany(), 2)
        llama.fake.gate.set()
        received += await resp.read()

    assert received.index(b"event: start") < received.index(b": keep-alive")
    assert received.endswith(b"\n\n") and b"event: done" in received


async def test_keepalive_before_first_token(llama: Any, pollex: Any) -> None:
    llama.fake.gate = asyncio.Event()
    llama.fake.gate_after = 0
    client = await pollex(llamacpp_url=llama.url, keepalive_s=0.05)

    async with client.post("/api/polish", json={"text": "x", "stream": True}) as resp:
        first = await asyncio.wait_for(resp.content.readany(), 2)
        llama.fake.gate.set()
        rest = await resp.read()

    assert first.startswith(b": keep-alive\n\n")
    assert b"event: done" in rest


@pytest.mark.parametrize("dialect", ["b5050", "current"])
async def test_mid_stream_upstream_error_ends_with_error_event(
    llama: Any, ollama: Any, pollex: Any, dialect: str
) -> None:
    llama.fake.dialect = dialect
    llama.fake.mid_stream_error = True
    client = await pollex(llamacpp_url=llama.url, ollama_url=ollama.url)

    events = await collect_events(
        str(client.make_url("/api/polish")), {"text": "x", "stream": True}
    )

    assert [e.event for e in events] == ["start", "delta", "delta", "delta", "error"]
    assert events[-1].data == {"error": "llama-server reported an error", "status": 502}
    assert ollama.fake.requests == []  # never two models in one answer


async def test_stream_cut_mid_way_is_an_error_event(llama: Any, ollama: Any, pollex: Any) -> None:
    llama.fake.cut_after = 3
    client = await pollex(llamacpp_url=llama.url, ollama_url=ollama.url)

    events = await collect_events(
        str(client.make_url("/api/polish")), {"text": "x", "stream": True}
    )

    assert [e.event for e in events] == ["start", "delta", "delta", "delta", "error"]
    assert events[-1].data == {"error": "llama-server stream was cut", "status": 502}
    assert ollama.fake.requests == []


async def test_json_mode_reports_a_mid_stream_cut(llama: Any, pollex: Any) -> None:
    llama.fake.cut_after = 3
    client = await pollex(llamacpp_url=llama.url)

    resp = await client.post("/api/polish", json={"text": "x"})

    assert resp.status == 502
    assert "llama-server" in (await resp.json())["error"]


async def test_sse_client_leaving_cancels_the_upstream(llama: Any, pollex: Any) -> None:
    llama.fake.chunk_delay = 0.2
    client = await pollex(llamacpp_url=llama.url)

    async with aiohttp.ClientSession() as session:
        url = client.make_url("/api/polish")
        resp, _ = await stream_until(session, url, {"text": "x", "stream": True}, b"event: delta")
        resp.close()  # the reader goes away mid-answer

    await asyncio.wait_for(llama.fake.cancelled.wait(), 2)
    assert llama.fake.streams_completed == 0


async def test_json_client_leaving_cancels_the_upstream(llama: Any, pollex: Any) -> None:
    llama.fake.gate = asyncio.Event()
    client = await pollex(llamacpp_url=llama.url)

    with pytest.raises(asyncio.TimeoutError):
        await client.post("/api/polish", json={"text": "x"}, timeout=aiohttp.ClientTimeout(0.3))

    await asyncio.wait_for(llama.fake.cancelled.wait(), 2)


def _too_long() -> dict[str, Any]:
    return {"text": "a" * 10001}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({}, 400, "text: required, must be a string"),
        ({"text": 5}, 400, "text: required, must be a string"),
        ({"text": "  \n\t "}, 400, "text: must not be empty"),
        (_too_long(), 400, "text: longer than 10000 characters"),
        ({"text": "x", "model_id": 3}, 400, "model_id: must be a string"),
        ({"text": "x", "stream": "yes"}, 400, "stream: must be true or false"),
        ({"text": "x", "fallback": 1}, 400, "fallback: must be true or false"),
        ({"text": "x", "model_id": "gpt-9"}, 400, "unknown model: gpt-9"),
        ([1, 2], 400, "request body must be a JSON object"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_bad_requests_are_json_errors_even_for_sse(
    llama: Any, pollex: Any, body: Any, status: int, message: str, stream: bool
) -> None:
    client = await pollex(llamacpp_url=llama.url)
    headers = {"Accept": "text/event-stream"} if stream else {}

    resp = await client.post("/api/polish", json=body, headers=headers)

    assert resp.status == status
    assert resp.headers["Content-Type"].startswith("application/json")
    assert await resp.json() == {"error": message}
    assert llama.fake.requests == []


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"this is not json", "request body is not valid JSON"),
        (b'{"text": "\xff\xfe"}', "request body is not UTF-8"),
        (b"", "request body is not valid JSON"),
    ],
)
async def test_undecodable_bodies(llama: Any, pollex: Any, raw: bytes, message: str) -> None:
    client = await pollex(llamacpp_url=llama.url)

    resp = await client.post("/api/polish", data=raw, headers={"Content-Type": "application/json"})

    assert resp.status == 400
    assert await resp.json() == {"error": message}


async def test_body_over_the_limit_is_413(llama: Any, pollex: Any) -> None:
    client = await pollex(llamacpp_url=llama.url, max_body_bytes=1000)

    resp = await client.post(
        "/api/polish",
        data=json.dumps({"text": "a" * 2000}),
        headers={"Content-Type": "application/json"},
    )

    assert resp.status == 413
    assert await resp.json() == {"error": "request body too large"}


async def test_unknown_fields_are_ignored(llama: Any, pollex: Any) -> None:
    client = await pollex(llamacpp_url=llama.url)

    resp = await client.post("/api/polish", json={"text": "x", "tone": "formal"})

    assert resp.status == 200
