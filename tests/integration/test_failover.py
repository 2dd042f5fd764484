"""Failover from llama-server to Ollama (design §4), end to end over real sockets."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from fakes import closed_port_url
from helpers import (
    CPU,
    GPU,
    OLLAMA_TEXT,
    collect_events,
    eventually,
    failovers,
    health_of,
    polish,
    routable,
)


async def test_port_closed_fails_over_to_ollama(ollama: Any, pollex: Any) -> None:
    client = await pollex(llamacpp_url=closed_port_url(), llamacpp_model=GPU, ollama_url=ollama.url)

    status, body = await polish(client)

    assert status == 200
    assert body["polished"] == OLLAMA_TEXT
    assert (body["provider"], body["model"], body["fallback_from"]) == ("ollama", CPU, GPU)
    assert failovers(client, GPU, CPU) == 1


@pytest.mark.parametrize("failure", ["error500", "loading"])
async def test_upstream_5xx_fails_over_and_marks_down(
    llama: Any, ollama: Any, pollex: Any, failure: str
) -> None:
    llama.fake.chat = failure
    client = await pollex(
        llamacpp_url=llama.url, llamacpp_model=GPU, ollama_url=ollama.url, probe_interval_s=60
    )
    await eventually(lambda: llama.fake.probes >= 1)

    status, body = await polish(client)

    assert status == 200
    assert (body["provider"], body["fallback_from"]) == ("ollama", GPU)
    health = await health_of(client)
    assert health["status"] == "degraded"
    assert health["adapters"][GPU]["available"] is False
    assert len(llama.fake.requests) == 1
    # Known down now: the next request goes straight to Ollama, still counted as a failover.
    status, body = await polish(client)
    assert body["fallback_from"] == GPU
    assert len(llama.fake.requests) == 1
    assert failovers(client, GPU, CPU) == 2


async def test_loading_probe_routes_straight_to_ollama(
    llama: Any, ollama: Any, pollex: Any
) -> None:
    llama.fake.health = "loading"
    client = await pollex(llamacpp_url=llama.url, llamacpp_model=GPU, ollama_url=ollama.url)
    await eventually(lambda: llama.fake.probes >= 1)
    health = await health_of(client)
    assert health["adapters"][GPU]["reason"] == "llama-server loading model"

    status, body = await polish(client)

    assert (status, body["provider"], body["fallback_from"]) == (200, "ollama", GPU)
    assert llama.fake.requests == []


async def test_sse_failover_is_invisible_but_for_fallback_from(ollama: Any, pollex: Any) -> None:
    client = await pollex(llamacpp_url=closed_port_url(), llamacpp_model=GPU, ollama_url=ollama.url)

    events = await collect_events(
        str(client.make_url("/api/polish")), {"text": "x", "stream": True}
    )

    assert [e.event for e in events] == ["start"] + ["delta"] * 7 + ["done"]
    assert events[0].data["fallback_from"] == GPU
    assert events[0].data["provider"] == "ollama"
    assert events[-1].data["polished"] == OLLAMA_TEXT
    assert events[-1].data["usage"] == {
        "prompt_tokens": 26,
        "completion_tokens": 7,
        "tokens_per_second": 4.0,
    }


async def test_recovers_to_llama_server_when_it_comes_back(
    llama: Any, ollama: Any, pollex: Any
) -> None:
    client = await pollex(llamacpp_url=llama.url, llamacpp_model=GPU, ollama_url=ollama.url)
    await llama.stop()
    await eventually(lambda: client.app is not None and not routable(client, GPU))
    assert (await polish(client))[1]["provider"] == "ollama"

    await llama.restart()
    await eventually(lambda: routable(client, GPU))

    status, body = await polish(client)
    assert (status, body["provider"], body["fallback_from"]) == (200, "llamacpp", None)


async def test_fallback_false_pins_the_request(ollama: Any, pollex: Any) -> None:
    client = await pollex(llamacpp_url=closed_port_url(), llamacpp_model=GPU, ollama_url=ollama.url)

    status, body = await polish(client, fallback=False)

    assert status == 503
    assert body["error"].startswith("no backend could serve the request (llama.cpp (")
    assert ollama.fake.requests == []


async def test_fallback_false_in_sse_is_a_503_before_the_stream(ollama: Any, pollex: Any) -> None:
    """The SSE headers wait for the first event: a failure found before it is an HTTP 503."""
    client = await pollex(llamacpp_url=closed_port_url(), llamacpp_model=GPU, ollama_url=ollama.url)

    resp = await client.post("/api/polish", json={"text": "x", "stream": True, "fallback": False})

    assert resp.status == 503
    assert "Retry-After" in resp.headers
    assert (await resp.json())["error"].startswith("no backend could serve the request")
    assert ollama.fake.requests == []


async def test_model_id_selects_an_adapter(llama: Any, ollama: Any, pollex: Any) -> None:
    client = await pollex(llamacpp_url=llama.url, llamacpp_model=GPU, ollama_url=ollama.url)

    status, body = await polish(client, model_id=CPU)

    assert (status, body["provider"], body["fallback_from"]) == (200, "ollama", None)
    assert llama.fake.requests == []


async def test_all_down_still_tries_each_then_503(pollex: Any) -> None:
    client = await pollex(llamacpp_url=closed_port_url(), ollama_url=closed_port_url())
    await eventually(lambda: not routable(client, "llama.cpp") and not routable(client, CPU))

    status, body = await polish(client)

    assert status == 503
    assert "llama.cpp (llama.cpp): llama-server unreachable" in body["error"]
    assert f"Ollama ({CPU}): ollama unreachable" in body["error"]


async def test_hung_upstream_is_abandoned_when_its_probe_fails(
    llama: Any, ollama: Any, pollex: Any
) -> None:
    llama.fake.chat = "hang"
    client = await pollex(
        llamacpp_url=llama.url,
        llamacpp_model=GPU,
        ollama_url=ollama.url,
        probe_timeout_s=0.1,
        first_token_timeout_s=30,
    )
    await eventually(lambda: llama.fake.probes >= 1)
    llama.fake.health = "hang"  # the whole server wedges after the request arrived

    started = time.monotonic()
    status, body = await polish(client)

    assert (status, body["provider"], body["fallback_from"]) == (200, "ollama", GPU)
    assert time.monotonic() - started < 2  # one probe window, not the 30 s first-token limit
    await asyncio.wait_for(llama.fake.cancelled.wait(), 2)


async def test_first_token_timeout_fails_over(llama: Any, ollama: Any, pollex: Any) -> None:
    llama.fake.chat = "hang"
    client = await pollex(
        llamacpp_url=llama.url,
        llamacpp_model=GPU,
        ollama_url=ollama.url,
        llamacpp_first_token_timeout_s=0.2,
    )

    status, body = await polish(client)

    assert (status, body["provider"], body["fallback_from"]) == (200, "ollama", GPU)
    assert not routable(client, GPU)


async def test_busy_gpu_is_not_marked_down(llama: Any, ollama: Any, pollex: Any) -> None:
    """Probes that time out while the GPU's stream keeps producing tokens are let off.
    (A stream gone silent as well is a frozen server, which is marked down.)"""
    llama.fake.reply = lambda text: [" word"] * 500
    llama.fake.chunk_delay = 0.01  # tokens flow all along, 10 ms apart
    client = await pollex(
        llamacpp_url=llama.url, llamacpp_model=GPU, ollama_url=ollama.url, probe_timeout_s=0.05
    )
    await eventually(lambda: llama.fake.probes >= 1)
    text = "i go to the store " * 10  # its output bound, 184 tokens, streams for ~2 s
    request = asyncio.create_task(client.post("/api/polish", json={"text": text}))
    await eventually(lambda: llama.fake.streams_started == 1)
    await asyncio.sleep(0.02)
    llama.fake.health = "hang"  # probes time out while it streams
    probes = llama.fake.probes
    await eventually(lambda: llama.fake.probes >= probes + 3)

    assert routable(client, GPU)
    assert llama.fake.streams_completed == 0  # still streaming through all those probes
    resp = await request
    body = await resp.json()
    assert (body["provider"], body["fallback_from"]) == ("llamacpp", None)
    assert body["polished"].split() == ["word"] * 184


async def test_context_too_long_fails_over_without_marking_down(
    llama: Any, ollama: Any, pollex: Any
) -> None:
    llama.fake.chat = "context"
    client = await pollex(llamacpp_url=llama.url, llamacpp_model=GPU, ollama_url=ollama.url)

    status, body = await polish(client)

    assert (status, body["provider"]) == (200, "ollama")
    assert routable(client, GPU)


async def test_request_fault_is_not_retried_elsewhere(llama: Any, ollama: Any, pollex: Any) -> None:
    llama.fake.chat = "bad_request"
    client = await pollex(llamacpp_url=llama.url, llamacpp_model=GPU, ollama_url=ollama.url)

    status, body = await polish(client)

    assert status == 502
    assert body["error"] == "llama-server answered HTTP 400"  # not its words
    assert ollama.fake.requests == []


async def test_garbage_from_llama_fails_over(llama: Any, ollama: Any, pollex: Any) -> None:
    llama.fake.chat = "garbage"
    client = await pollex(llamacpp_url=llama.url, llamacpp_model=GPU, ollama_url=ollama.url)

    status, body = await polish(client)

    assert (status, body["provider"]) == (200, "ollama")


async def test_ollama_mid_stream_error_after_output_is_final(ollama: Any, pollex: Any) -> None:
    ollama.fake.mid_stream_error = True
    client = await pollex(ollama_url=ollama.url)

    events = await collect_events(
        str(client.make_url("/api/polish")), {"text": "x", "stream": True}
    )

    assert [e.event for e in events] == ["start", "delta", "delta", "error"]
    assert events[-1].data["error"] == "ollama reported an error"  # not its words
