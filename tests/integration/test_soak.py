"""A bounded soak: many SSE clients while llama-server is killed and restarted.

Small by default so it runs in CI (a few seconds); turn it up with the environment:
`POLLEX_SOAK_CLIENTS` (default 8), `POLLEX_SOAK_ROUNDS` (default 3: each client streams at
least this many times, and keeps streaming until the last kill is over) and
`POLLEX_SOAK_KILLS` (default 3). `pytest -m soak -s` prints a one-line summary.

Asserted: no request is lost (each ends in `done`, or in `error` only after output had
begun: every other kill cuts streams mid-answer; a `done` never splices two models'
outputs); after settling, no descriptors (`/proc/self/fd`) and no asyncio tasks leaked;
RSS grew by less than 20 MB.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import httpx_sse
import pytest
from helpers import CPU, GPU, routable

pytestmark = pytest.mark.soak

CLIENTS = int(os.environ.get("POLLEX_SOAK_CLIENTS", "8"))
ROUNDS = int(os.environ.get("POLLEX_SOAK_ROUNDS", "3"))
KILLS = int(os.environ.get("POLLEX_SOAK_KILLS", "3"))
CHUNK_DELAY_S = 0.01  # a stream takes 0.06-0.1 s
UP_S = 0.25  # how long llama-server serves between kills
DOWN_S = 0.1  # and how long it stays dead
# Every other kill (the first included) is "hard": streams are held mid-answer for
# HOLD_S first, so the stop (which waits 0.2 s for handlers) cuts them after output began.
HOLD_S = 0.05
RSS_BOUND_KB = 20 * 1024
# Keep-alive connections pollex holds to the fakes (both ends live in this process) can
# differ a little from the warmed-up baseline; a leak grows with the request count.
FD_SLACK = 6
TASK_SLACK = 2


@dataclass
class Outcome:
    kind: str  # done | error_after_output | lost
    provider: str | None = None
    fallback_from: str | None = None
    detail: str = ""


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, kind: str) -> int:
        return sum(o.kind == kind for o in self.outcomes)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def task_count() -> int:
    return len(asyncio.all_tasks())


async def settle(done: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll in small steps until `done()` or the timeout; the caller asserts afterwards."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return
        await asyncio.sleep(0.02)


async def stream_once(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> Outcome:
    """One SSE polish, classified. Anything but a clean end is `lost`, with the reason."""
    names: list[str] = []
    deltas: list[str] = []
    try:
        async with httpx_sse.aconnect_sse(http, "POST", url, json=body) as source:
            if source.response.status_code != 200:
                await source.response.aread()
                return Outcome("lost", detail=f"HTTP {source.response.status_code}")
            start: dict[str, Any] = {}
            async for sse in source.aiter_sse():
                data = json.loads(sse.data)
                names.append(sse.event)
                if sse.event == "start":
                    start = data
                elif sse.event == "delta":
                    deltas.append(data["text"])
                elif sse.event == "done":
                    if data["polished"] != "".join(deltas).strip():
                        return Outcome("lost", detail=f"done does not match deltas: {data}")
                    return Outcome("done", data["provider"], data["fallback_from"])
                elif sse.event == "error":
                    if "start" in names:  # after any `queued` events
                        return Outcome("error_after_output", start["provider"], detail=str(data))
                    return Outcome("lost", detail=f"error before output: {data}")
    except httpx.HTTPError as exc:
        return Outcome("lost", detail=f"{type(exc).__name__}: {exc} after {names}")
    return Outcome("lost", detail=f"stream ended without done/error after {names}")


async def test_streams_survive_primary_kills(llama: Any, ollama: Any, pollex: Any) -> None:
    llama.fake.chunk_delay = ollama.fake.chunk_delay = CHUNK_DELAY_S
    # Slots for every client on both: the point is many streams on each upstream at once
    # (a kill cuts several mid-answer), not pollex's queue in front of a one-slot server.
    client = await pollex(
        llamacpp_url=llama.url,
        llamacpp_model=GPU,
        ollama_url=ollama.url,
        llamacpp_slots=CLIENTS,
        ollama_slots=CLIENTS,
    )
    url = str(client.make_url("/api/polish"))
    body = {"text": "i go to the store", "stream": True}

    # One HTTP client for everything: httpx builds an SSL context (about 1 MB) per client.
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=None)) as http:
        # Warm up: both adapters serve CLIENTS streams at once, so the connection pools,
        # lazily imported code and caches are at their working size before the baseline.
        warm = await asyncio.gather(
            *(
                stream_once(http, url, {**body, "model_id": model, "fallback": False})
                for model in (GPU, CPU)
                for _ in range(CLIENTS)
            )
        )
        assert [o.kind for o in warm] == ["done"] * (2 * CLIENTS), warm
        await asyncio.sleep(0.1)  # let the warm-up's closed connections wind down
        fds_before, tasks_before, rss_before = fd_count(), task_count(), rss_kb()

        kills_over = asyncio.Event()
        tally = Tally()

        async def client_loop() -> None:
            rounds = 0
            while rounds < ROUNDS or not kills_over.is_set():
                tally.outcomes.append(await stream_once(http, url, body))
                rounds += 1
                for fake in (llama.fake, ollama.fake):  # their request logs are not pollex's
                    fake.requests.clear()
                    fake.headers.clear()

        async def killer() -> None:
            for kill in range(KILLS):
                await asyncio.sleep(UP_S)
                hard = kill % 2 == 0
                if hard:  # hold the streams after their first word, so the kill cuts them
                    llama.fake.gate_after, llama.fake.gate = 2, asyncio.Event()
                    await asyncio.sleep(HOLD_S)
                await llama.stop()
                if hard:
                    llama.fake.gate.set()
                    llama.fake.gate = None
                await asyncio.sleep(DOWN_S)
                await llama.restart()
            kills_over.set()

        started = time.monotonic()
        await asyncio.gather(killer(), *(client_loop() for _ in range(CLIENTS)))
        elapsed = time.monotonic() - started

        # Back to normal: once llama-server is seen up again, it serves and nothing fails.
        await settle(lambda: routable(client, GPU))
        after = await asyncio.gather(*(stream_once(http, url, body) for _ in range(CLIENTS)))

        await settle(
            lambda: (
                fd_count() - fds_before <= FD_SLACK and task_count() - tasks_before <= TASK_SLACK
            )
        )
        fd_delta, task_delta, rss_after = (
            fd_count() - fds_before,
            task_count() - tasks_before,
            rss_kb(),
        )
    lost = [o for o in tally.outcomes if o.kind == "lost"]
    providers = Counter(o.provider for o in tally.outcomes)
    failovers = sum(o.fallback_from == GPU for o in tally.outcomes)
    print(
        f"\nsoak: {len(tally.outcomes)} requests by {CLIENTS} clients in {elapsed:.1f} s, "
        f"done={tally.count('done')}, errors-after-output={tally.count('error_after_output')}, "
        f"lost={len(lost)}, kills={KILLS}, failovers={failovers}, "
        f"providers={dict(providers)}, fd delta={fd_delta:+d}, task delta={task_delta:+d}, "
        f"RSS {rss_before / 1024:.1f} -> {rss_after / 1024:.1f} MB"
    )

    assert lost == [], lost[:5]
    assert len(tally.outcomes) >= CLIENTS * ROUNDS
    if KILLS:
        assert failovers > 0, "the kills never made a request fail over"
        assert tally.count("error_after_output") > 0, "no stream was cut mid-answer"
    assert [o.kind for o in after] == ["done"] * CLIENTS, after
    assert "llamacpp" in {o.provider for o in after}, after
    assert fd_delta <= FD_SLACK, f"descriptors leaked: {fd_delta:+d}"
    assert task_delta <= TASK_SLACK, f"tasks leaked: {task_delta:+d}: {asyncio.all_tasks()}"
    assert rss_after - rss_before < RSS_BOUND_KB, f"RSS grew {rss_after - rss_before} kB"
