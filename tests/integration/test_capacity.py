"""Many writers, one Nano (issue 10): slots, the queue and its positions, spill-over,
several hosts, output bounded by the input, long texts split to fit the context.

Real sockets; the fake upstreams have slots and a paced token rate.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import aiohttp
from helpers import CPU, GPU, Event, eventually, health_of, sample, sse_events

from pollex.routing.jobs import output_bound
from pollex.web.keys import AVAILABILITY, BACKENDS

TEXT = "i has went to the store yesterday , it were closed"


def words_of(text: str) -> list[str]:
    """The fakes' reply: the text in capitals, word by word, spaces kept."""
    return re.findall(r"\S+\s*", text.upper())


async def stream(client: Any, **body: Any) -> list[Event]:
    url = str(client.make_url("/api/polish"))
    return [e async for e in sse_events(url, {"text": TEXT, "stream": True, **body})]


def gated(fake: Any) -> asyncio.Event:
    """Hold every answer of `fake` after its first chunk until the event is set."""
    fake.gate = asyncio.Event()
    fake.gate_after = 1
    return fake.gate


async def one_slot_llama(pollex: Any, llama: Any, **settings: Any) -> Any:
    llama.fake.reply = words_of
    return await pollex(
        llamacpp_url=llama.url, llamacpp_model=GPU, fallback=["llamacpp"], **settings
    )


async def queued_count(client: Any) -> int:
    return int((await health_of(client))["adapters"][GPU]["queued"])


async def test_three_queued_writers_see_their_positions(llama: Any, pollex: Any) -> None:
    client = await one_slot_llama(pollex, llama)
    gate = gated(llama.fake)
    first = asyncio.create_task(stream(client))
    await eventually(lambda: llama.fake.streams_started == 1)
    waiting = []
    for count in (1, 2, 3):
        waiting.append(asyncio.create_task(stream(client)))
        for _ in range(300):
            if await queued_count(client) == count:
                break
            await asyncio.sleep(0.01)
    assert await queued_count(client) == 3
    gate.set()
    answers = await asyncio.gather(first, *waiting)
    positions = [[e.data["position"] for e in events if e.event == "queued"] for events in answers]
    assert positions == [[], [1], [2, 1], [3, 2, 1]]
    for events in answers[1:]:
        queued = [e for e in events if e.event == "queued"]
        assert all(e.data["model"] == GPU for e in queued)
        assert all(set(e.data) == {"position", "model", "estimated_wait_s"} for e in queued)
        assert events[len(queued)].event == "start"
        assert events[-1].event == "done"
    # By its last move, the last writer's wait was estimated from the ones served before.
    last_move = [e for e in answers[3] if e.event == "queued"][-1]
    assert last_move.data["estimated_wait_s"] is not None
    assert llama.fake.most_in_flight == 1
    assert sample(client, "pollex_queue_wait_seconds_count", adapter=GPU) == 4


async def test_a_writer_who_leaves_the_queue_never_reaches_the_backend(
    llama: Any, pollex: Any
) -> None:
    client = await one_slot_llama(pollex, llama)
    gate = gated(llama.fake)
    first = asyncio.create_task(stream(client))
    await eventually(lambda: llama.fake.streams_started == 1)
    leaver = asyncio.create_task(stream(client))
    upstream = llama.url.split("//")[1]
    await eventually(
        lambda: sample(client, "pollex_queued_requests", adapter=GPU, upstream=upstream) == 1
    )
    leaver.cancel()
    for _ in range(300):
        if await queued_count(client) == 0:
            break
        await asyncio.sleep(0.01)
    assert await queued_count(client) == 0
    gate.set()
    await first
    assert len(llama.fake.requests) == 1


async def test_a_full_queue_is_503_with_retry_after(llama: Any, pollex: Any) -> None:
    client = await one_slot_llama(pollex, llama, max_queue=1)
    gate = gated(llama.fake)
    first = asyncio.create_task(stream(client))
    await eventually(lambda: llama.fake.streams_started == 1)
    second = asyncio.create_task(stream(client))
    for _ in range(300):
        if await queued_count(client) == 1:
            break
        await asyncio.sleep(0.01)
    resp = await client.post("/api/polish", json={"text": TEXT})
    assert resp.status == 503
    assert int(resp.headers["Retry-After"]) >= 1
    assert "queue is full" in (await resp.json())["error"]
    openai = await client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": TEXT}], "stream": True},
    )
    assert openai.status == 503  # the deferred headers make it a real HTTP error
    assert openai.headers["Retry-After"]
    gate.set()
    await asyncio.gather(first, second)
    assert len(llama.fake.requests) == 2


async def test_spill_with_zero_wait_goes_to_the_free_fallback(
    llama: Any, ollama: Any, pollex: Any
) -> None:
    llama.fake.reply = words_of
    client = await pollex(
        llamacpp_url=llama.url, llamacpp_model=GPU, ollama_url=ollama.url, max_queue_wait_s=0
    )
    gate = gated(llama.fake)
    first = asyncio.create_task(stream(client))
    await eventually(lambda: llama.fake.streams_started == 1)
    events = await stream(client)
    start = next(e for e in events if e.event == "start")
    assert (start.data["model"], start.data["fallback_from"]) == (CPU, GPU)
    assert not [e for e in events if e.event == "queued"]
    assert sample(client, "pollex_spills_total", from_adapter=GPU, to_adapter=CPU) == 1
    assert sample(client, "pollex_failovers_total", from_adapter=GPU, to_adapter=CPU) == 0
    gate.set()
    await first


async def test_json_clients_simply_wait_and_the_wait_counts_against_the_request(
    llama: Any, pollex: Any
) -> None:
    client = await one_slot_llama(pollex, llama, request_timeout_s=0.5)
    gate = gated(llama.fake)
    first = asyncio.create_task(stream(client))
    await eventually(lambda: llama.fake.streams_started == 1)
    started = time.monotonic()
    resp = await client.post("/api/polish", json={"text": TEXT})
    assert resp.status == 504
    assert time.monotonic() - started < 2.0
    assert await queued_count(client) == 0
    gate.set()
    await first
    resp = await client.post("/api/polish", json={"text": TEXT})
    assert resp.status == 200
    assert (await resp.json())["polished"] == TEXT.upper()


async def test_slots_learned_from_props_are_never_exceeded(llama: Any, pollex: Any) -> None:
    llama.fake.props = {"total_slots": 2, "default_generation_settings": {"n_ctx": 4096}}
    llama.fake.slots = 2
    client = await one_slot_llama(pollex, llama)
    host = client.app[BACKENDS].by_id[GPU].hosts[0]
    await eventually(lambda: client.app[AVAILABILITY].state(host).slots == 2)
    gate = gated(llama.fake)
    writers = [asyncio.create_task(stream(client)) for _ in range(3)]
    await eventually(lambda: llama.fake.streams_started == 2)
    body = await health_of(client)
    assert body["adapters"][GPU]["slots"] == 2
    assert body["adapters"][GPU]["busy_slots"] == 2
    assert body["adapters"][GPU]["queued"] == 1
    gate.set()
    answers = await asyncio.gather(*writers)
    assert all(events[-1].event == "done" for events in answers)
    assert llama.fake.most_in_flight == 2


async def test_two_hosts_each_serve_one_writer(serve_fake: Any, pollex: Any) -> None:
    from fakes import FakeLlamaServer

    nanos = [await serve_fake(FakeLlamaServer()) for _ in range(2)]
    for nano in nanos:
        nano.fake.reply = words_of
    client = await pollex(
        llamacpp_url=[n.url for n in nanos], llamacpp_model=GPU, fallback=["llamacpp"]
    )
    gates = [gated(n.fake) for n in nanos]
    writers = [asyncio.create_task(stream(client)) for _ in range(2)]
    await eventually(lambda: all(n.fake.streams_started == 1 for n in nanos))
    body = await health_of(client)
    hosts = body["adapters"][GPU]["hosts"]
    assert set(hosts) == {n.url.split("//")[1] for n in nanos}
    assert all(h["busy_slots"] == 1 and h["slots"] == 1 for h in hosts.values())
    assert body["adapters"][GPU]["busy_slots"] == 2
    for gate in gates:
        gate.set()
    answers = await asyncio.gather(*writers)
    assert all(events[-1].data["model"] == GPU for events in answers)
    # One model id for clients, whichever host served.
    models = await (await client.get("/api/models")).json()
    assert [m["id"] for m in models] == [GPU]


async def test_a_frozen_host_is_skipped_and_health_is_degraded(
    serve_fake: Any, pollex: Any
) -> None:
    from fakes import FakeLlamaServer

    nanos = [await serve_fake(FakeLlamaServer()) for _ in range(2)]
    for nano in nanos:
        nano.fake.reply = words_of
    client = await pollex(
        llamacpp_url=[n.url for n in nanos], llamacpp_model=GPU, fallback=["llamacpp"]
    )
    frozen, alive = nanos
    frozen.fake.freeze()
    frozen_host = frozen.url.split("//")[1]
    for _ in range(300):
        body = await health_of(client)
        if not body["adapters"][GPU]["hosts"][frozen_host]["available"]:
            break
        await asyncio.sleep(0.01)
    assert body["status"] == "degraded"
    assert body["adapters"][GPU]["available"] is True
    assert body["adapters"][GPU]["hosts"][frozen_host]["reason"] == "probe timed out"
    for _ in range(3):
        events = await stream(client)
        assert events[-1].event == "done"
    assert len(alive.fake.requests) == 3
    assert frozen.fake.requests == []
    frozen.fake.thaw()


async def test_the_output_is_bounded_by_the_input(llama: Any, pollex: Any) -> None:
    client = await one_slot_llama(pollex, llama)
    llama.fake.reply = lambda text: ["ramble "] * 1000  # a base model that goes on and on
    events = await stream(client)
    bound = output_bound(len(TEXT), 1024)
    assert llama.fake.requests[0]["max_tokens"] == bound == 2 * 17 + 64
    done = events[-1]
    assert done.data["finish_reason"] == "length"
    assert len([e for e in events if e.event == "delta"]) == bound


async def test_a_client_may_ask_for_less_on_v1(llama: Any, pollex: Any) -> None:
    client = await one_slot_llama(pollex, llama)
    resp = await client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": TEXT}], "max_tokens": 5},
    )
    assert resp.status == 200
    assert llama.fake.requests[0]["max_tokens"] == 5
    assert (await resp.json())["choices"][0]["finish_reason"] == "length"


async def test_ten_paragraphs_against_a_512_token_context(llama: Any, pollex: Any) -> None:
    llama.fake.props = {"total_slots": 1, "default_generation_settings": {"n_ctx": 512}}
    client = await one_slot_llama(pollex, llama)
    host = client.app[BACKENDS].by_id[GPU].hosts[0]
    await eventually(lambda: client.app[AVAILABILITY].state(host).context == 512)
    paragraph = (
        "Our team have finish the report about the new onboarding process last week. "
        "We explains every step and we adds screenshots for the more complicate parts. "
    )
    text = "\n\n".join(f"{n}. {paragraph}".strip() for n in range(1, 11))
    events = await stream(client, text=text)
    assert [e.event for e in events].count("start") == 1
    assert events[-1].event == "done"
    pieces = [r["messages"][-1]["content"] for r in llama.fake.requests]
    assert len(pieces) > 1
    streamed = "".join(e.data["text"] for e in events if e.event == "delta")
    # What the pieces returned, joined by the text's own separators, byte for byte.
    assert streamed == text.upper()
    assert events[-1].data["polished"] == text.upper()
    for piece in pieces:
        assert "\n\n" not in piece or len(piece) < len(text)


async def test_metrics_of_capacity_exist_from_the_start(llama: Any, pollex: Any) -> None:
    client = await one_slot_llama(pollex, llama)
    body = await (await client.get("/metrics")).text()
    upstream = llama.url.split("//")[1]
    assert f'pollex_busy_slots{{adapter="{GPU}",upstream="{upstream}"}} 0.0' in body
    assert f'pollex_queued_requests{{adapter="{GPU}",upstream="{upstream}"}} 0.0' in body
    assert "_created" not in body


async def test_concurrent_writers_through_the_socket_are_all_served(
    llama: Any, ollama: Any, pollex: Any
) -> None:
    """Five writers on a one-slot primary with a one-slot fallback: every one answered,
    neither upstream ever asked for more than it has."""
    llama.fake.reply = words_of
    llama.fake.chunk_delay = 0.005
    ollama.fake.chunk_delay = 0.005
    client = await pollex(llamacpp_url=llama.url, llamacpp_model=GPU, ollama_url=ollama.url)
    async with aiohttp.ClientSession() as session:

        async def one() -> int:
            url = client.make_url("/api/polish")
            async with session.post(url, json={"text": TEXT}) as resp:
                return resp.status

        statuses = await asyncio.gather(*(one() for _ in range(5)))
    assert statuses == [200] * 5
    assert llama.fake.most_in_flight == 1
    assert ollama.fake.most_in_flight == 1
