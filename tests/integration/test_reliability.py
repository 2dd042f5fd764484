"""What an adversarial pass broke (issue 9, items 1, 2, 4 and 7), end to end.

Hostile chunks from each upstream, lone surrogates, an exception after the headers went
out (exactly one HTTP response on the wire), a primary that freezes mid-stream, error
texts that would leak user text or addresses, and a client that stops reading.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from fakes import closed_port_url, llama_chunks
from helpers import GPU, RawClient, collect_events, eventually
from structlog.testing import capture_logs

from pollex.adapters import ChatRequest, Finish
from pollex.adapters.mock import MockAdapter
from pollex.web.keys import BACKENDS, METRICS

TEXT = "i has went to the store"
SECRET = "the confidential merger with ACME closes on friday"


def sse(obj: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(obj)}\n\n".encode()


def llama_chunk(delta: Any) -> bytes:
    return sse({"choices": [{"index": 0, "finish_reason": None, "delta": delta}]})


def ollama_line(obj: Any) -> bytes:
    return (json.dumps(obj) + "\n").encode()


def claude_delta(delta: Any) -> bytes:
    return sse({"type": "content_block_delta", "index": 0, "delta": delta}, "content_block_delta")


CLAUDE_START = sse(
    {"type": "message_start", "message": {"usage": {"input_tokens": 3}}}, "message_start"
)
# Per upstream: a good first chunk, a chunk of the wrong shape, a chunk with a lone
# surrogate (JSON-escaped, as it arrives on the wire), and the end of a good answer.
HOSTILE = {
    "llamacpp": {
        "good": [llama_chunk({"content": "I "})],
        "wrong": llama_chunk("tok "),  # a string where the delta object belongs
        "surrogate": b'data: {"choices":[{"index":0,"delta":{"content":"have \\udc80gone"}}]}\n\n',
        "end": llama_chunks([], "stop")[1:],
    },
    "ollama": {
        "good": [ollama_line({"message": {"content": "I "}, "done": False})],
        "wrong": ollama_line({"message": {"content": ""}, "done": True, "eval_count": "seven"}),
        "surrogate": b'{"message":{"content":"have \\udc80gone"},"done":false}\n',
        "end": [ollama_line({"message": {"content": ""}, "done": True, "done_reason": "stop"})],
    },
    "claude": {
        "good": [CLAUDE_START, claude_delta({"type": "text_delta", "text": "I "})],
        "wrong": claude_delta("x"),
        "surrogate": b'event: content_block_delta\ndata: {"type":"content_block_delta",'
        b'"index":0,"delta":{"type":"text_delta","text":"have \\udc80gone"}}\n\n',
        "end": [sse({"type": "message_stop"}, "message_stop")],
    },
}


async def primary(provider: str, pollex: Any, serve_fake: Any, fallback: Any) -> tuple[Any, Any]:
    """pollex with `provider` first and Ollama second; the first upstream's fake."""
    from fakes import FakeAnthropic, FakeLlamaServer, FakeOllama

    if provider == "llamacpp":
        up = await serve_fake(FakeLlamaServer())
        settings = {"llamacpp_url": up.url, "llamacpp_model": GPU}
    elif provider == "ollama":
        up = await serve_fake(FakeOllama(model="other"))
        settings = {"ollama_url": up.url, "ollama_model": "other", "mock": True}
        return up, await pollex(**settings, fallback=["ollama", "mock"])
    else:
        up = await serve_fake(FakeAnthropic())
        settings = {
            "claude_api_key": "k",
            "claude_url": up.url,
            "claude_model": "claude-test",
        }
    client = await pollex(**settings, ollama_url=fallback.url, fallback=[provider, "ollama"])
    return up, client


async def raw_exchange(client: Any, path: str, body: dict[str, Any]) -> bytes:
    """Everything the server sends for one POST on its own connection, which it closes."""
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Connection: close\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    reply = await RawClient("127.0.0.1", client.port).send(head.encode() + payload, give_up_s=10)
    assert reply.ended == "eof", reply
    return reply.data


def responses_in(raw: bytes) -> int:
    return len(re.findall(rb"(?:^|\r\n|\n)HTTP/1\.[01] \d{3}", raw))


# --- item 1: foreign shapes, surrogates, nothing after the headers ----------------------


@pytest.mark.parametrize("provider", ["llamacpp", "ollama", "claude"])
async def test_a_wrong_shape_mid_answer_ends_the_stream_with_one_error_event(
    provider: str, pollex: Any, serve_fake: Any, ollama: Any
) -> None:
    up, client = await primary(provider, pollex, serve_fake, ollama)
    hostile = HOSTILE[provider]
    up.fake.raw_chunks = [*hostile["good"], hostile["wrong"], *hostile["end"]]
    raw = await raw_exchange(client, "/api/polish", {"text": TEXT, "stream": True})
    assert responses_in(raw) == 1
    assert raw.startswith(b"HTTP/1.1 200")
    assert b"event: error" in raw and b"does not understand" in raw
    assert raw.count(b"event: error") == 1 and b"event: done" not in raw


@pytest.mark.parametrize("provider", ["llamacpp", "ollama", "claude"])
async def test_a_wrong_shape_before_any_text_fails_over_in_json_mode(
    provider: str, pollex: Any, serve_fake: Any, ollama: Any
) -> None:
    up, client = await primary(provider, pollex, serve_fake, ollama)
    hostile = HOSTILE[provider]
    first = hostile["good"][:-1]  # Claude's message_start, nothing for the others
    up.fake.raw_chunks = [*first, hostile["wrong"], *hostile["end"]]
    resp = await client.post("/api/polish", json={"text": TEXT})
    assert resp.status == 200
    body = await resp.json()
    assert body["fallback_from"] is not None
    assert body["provider"] in ("ollama", "mock")


@pytest.mark.parametrize("provider", ["llamacpp", "ollama", "claude"])
@pytest.mark.parametrize("stream", [True, False])
async def test_a_lone_surrogate_becomes_the_replacement_character(
    provider: str, stream: bool, pollex: Any, serve_fake: Any, ollama: Any
) -> None:
    up, client = await primary(provider, pollex, serve_fake, ollama)
    hostile = HOSTILE[provider]
    up.fake.raw_chunks = [*hostile["good"], hostile["surrogate"], *hostile["end"]]
    raw = await raw_exchange(client, "/api/polish", {"text": TEXT, "stream": stream})
    assert responses_in(raw) == 1
    assert raw.startswith(b"HTTP/1.1 200")
    assert "have \ufffdgone".encode() in raw or b"have \\ufffdgone" in raw
    assert (b"event: done" in raw) if stream else (b'"polished"' in raw)


async def test_the_mock_with_a_surrogate_in_the_text(pollex: Any) -> None:
    client = await pollex(mock=True)
    raw = await raw_exchange(client, "/api/polish", {"text": "caf\udce9 is open", "stream": True})
    assert responses_in(raw) == 1
    assert "Caf\ufffd".encode() in raw
    assert b"event: done" in raw


async def test_an_unexpected_exception_after_the_headers_is_an_error_event(
    pollex: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(
        self: MockAdapter, chat: ChatRequest, finish: Finish
    ) -> AsyncGenerator[str, None]:
        yield "I "
        raise RuntimeError("a bug")

    monkeypatch.setattr(MockAdapter, "stream", broken)
    client = await pollex(mock=True)
    with capture_logs() as logs:
        raw = await raw_exchange(client, "/api/polish", {"text": TEXT, "stream": True})
        await eventually(lambda: any(e["event"] == "request" for e in logs))
    assert responses_in(raw) == 1
    assert b"event: error" in raw and b"internal error" in raw
    assert b"event: delta" in raw
    [bug] = [e for e in logs if e["event"] == "unhandled_error"]
    assert bug["exc_info"] is True
    chat = {"messages": [{"role": "user", "content": TEXT}], "stream": True}
    raw_openai = await raw_exchange(client, "/v1/chat/completions", chat)
    assert responses_in(raw_openai) == 1
    assert b'"internal error"' in raw_openai


# --- item 2: a primary that freezes while streams are in flight -------------------------


async def test_a_frozen_primary_is_detected_while_its_streams_are_silent(
    llama: Any, ollama: Any, pollex: Any
) -> None:
    llama.fake.reply = lambda text: [f"word{n} " for n in range(400)]
    llama.fake.chunk_delay = 0.02
    client = await pollex(
        llamacpp_url=llama.url, llamacpp_model=GPU, llamacpp_slots=3, ollama_url=ollama.url
    )
    url = str(client.make_url("/api/polish"))
    streams = [
        asyncio.create_task(collect_events(url, {"text": TEXT, "stream": True})) for _ in range(3)
    ]
    await eventually(lambda: llama.fake.in_flight == 3)
    await asyncio.sleep(0.1)  # tokens flowing
    frozen_at = time.monotonic()
    llama.fake.freeze()
    # Health shows it down within one probe interval + the probe timeout + 1 s.
    limit = 0.05 + 0.3 + 1.0
    while True:
        body = await (await client.get("/api/health")).json()
        if not body["adapters"][GPU]["available"]:
            break
        assert time.monotonic() - frozen_at < limit, "the frozen primary still looks healthy"
        await asyncio.sleep(0.01)
    resp = await client.post("/api/polish", json={"text": TEXT})
    assert resp.status == 200
    assert (await resp.json())["provider"] == "ollama"
    assert time.monotonic() - frozen_at < limit + 0.5
    answers = await asyncio.wait_for(asyncio.gather(*streams), 10)
    for events in answers:
        assert events[-1].event == "error"
        assert [e.event for e in events].count("start") == 1
        assert {e.data["model"] for e in events if e.event == "start"} == {GPU}
    llama.fake.thaw()


async def test_a_slow_health_while_tokens_flow_is_not_a_freeze(
    llama: Any, ollama: Any, pollex: Any
) -> None:
    llama.fake.reply = lambda text: [f"word{n} " for n in range(60)]
    llama.fake.chunk_delay = 0.02
    client = await pollex(llamacpp_url=llama.url, llamacpp_model=GPU, ollama_url=ollama.url)
    url = str(client.make_url("/api/polish"))
    writer = asyncio.create_task(collect_events(url, {"text": TEXT, "stream": True}))
    await eventually(lambda: llama.fake.in_flight == 1)
    llama.fake.health = "hang"  # every probe times out (0.3 s) while tokens keep coming
    events = await asyncio.wait_for(writer, 10)
    assert events[-1].event == "done"
    host = client.app[BACKENDS].by_id[GPU].hosts[0]
    from pollex.web.keys import AVAILABILITY

    assert client.app[AVAILABILITY].is_routable(host)


# --- item 4: no user text, no addresses in reasons and errors ---------------------------


async def test_an_upstream_that_quotes_the_text_does_not_leak_it(llama: Any, pollex: Any) -> None:
    llama.fake.chat = "echo500"
    client = await pollex(llamacpp_url=llama.url, llamacpp_model=GPU)
    with capture_logs() as logs:
        resp = await client.post("/api/polish", json={"text": SECRET})
        body = await resp.text()
        health = await (await client.get("/api/health")).text()
    assert resp.status == 503
    assert SECRET not in body and SECRET not in health
    assert "llama-server answered HTTP 500" in body
    assert "llama-server answered HTTP 500" in health
    leaked = [e for e in logs if SECRET in json.dumps(e, default=str)]
    assert all(e["log_level"] == "debug" for e in leaked)
    assert all(len(e["detail"]) <= 200 for e in leaked)


async def test_an_unreachable_upstream_does_not_name_its_address(pollex: Any) -> None:
    url = closed_port_url()
    client = await pollex(llamacpp_url=url, llamacpp_model=GPU)
    resp = await client.post("/api/polish", json={"text": TEXT})
    body = await resp.text()
    health = await (await client.get("/api/health")).json()
    port = url.rsplit(":", 1)[1]
    assert "llama-server unreachable" in body
    # Health names the host (which one is down), never the failure's own text.
    [reason] = [h["reason"] for h in health["adapters"][GPU]["hosts"].values()]
    for text in (body, reason, health["adapters"][GPU]["reason"]):
        assert "127.0.0.1" not in text and port not in text and "Connect call" not in text


# --- item 7: a client that stops reading ------------------------------------------------


async def test_a_client_that_stops_reading_is_client_stalled_not_a_sick_upstream(
    llama: Any, pollex: Any
) -> None:
    word = "x" * 2000 + " "
    llama.fake.reply = lambda text: [word] * 10_000  # 20 MB: more than any socket buffer
    client = await pollex(
        llamacpp_url=llama.url,
        llamacpp_model=GPU,
        idle_timeout_s=0.5,
        max_output_chars=50_000_000,
        max_output_tokens=100_000,
        max_text_chars=50_000,
    )
    # A long text, so that the output bound (twice the input) lets the answer run on.
    payload = json.dumps({"text": "x " * 10_000, "stream": True}).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    with capture_logs() as logs:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", client.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(
            b"POST /api/polish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
        )
        await reader.readuntil(b"\r\n\r\n")  # the headers, then nothing more is read
        await eventually(lambda: any(e["event"] == "request" for e in logs), timeout=10)
        writer.close()
    [line] = [e for e in logs if e["event"] == "request"]
    assert line["outcome"] == "client_stalled"
    host = client.app[BACKENDS].by_id[GPU].hosts[0]
    from pollex.web.keys import AVAILABILITY

    assert client.app[AVAILABILITY].is_routable(host)
    registry = client.app[METRICS].registry
    assert (
        registry.get_sample_value(
            "pollex_upstream_errors_total", {"adapter": GPU, "kind": "timeout"}
        )
        == 0
    )
