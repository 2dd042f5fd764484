"""Many writers on one Nano, simulated: what slots, spill-over and the output bound buy.

Run: python bench/nano_sim.py [--runs N] [--scale S]   (about a minute; loopback only)

A one-slot primary paced like the Nano's GPU (5 tokens/s) and a one-slot fallback paced
like its CPU (4 tokens/s), both fakes in this process that queue requests inside
themselves past their one slot, as llama-server and Ollama do. Time runs `--scale` times
faster than on the Nano (default 20: 100 and 80 tokens/s, a 0.05 s prompt time for 1 s);
every figure is printed in Nano seconds (multiplied back). One pollex per scenario, warmed
up with one polish on each backend (so each has a mean service time, as after a while in
service); then, each run, five writers arrive
at random times (seeded) within 30 Nano-seconds with texts of 100 to 800 characters; a
polite model answers about one token per four characters of input, a rambling one until it
is stopped. Scenarios:

- `no capacity`: pollex forwards everything at once (unlimited slots): the second writer
  waits inside llama-server, unseen, as before issue 10;
- `spill off`: pollex queues in front of the primary and never spills;
- `spill on`: the default, `max_queue_wait_s: 10`;
- `bound off` / `bound on`: a rambling primary, without and with the output bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from pollex.config import load_config
from pollex.log import configure_logging
from pollex.routing import jobs
from pollex.web.app import create_app

PRIMARY_TPS = 5.0
FALLBACK_TPS = 4.0
PROMPT_S = 1.0
WRITERS = 5
ARRIVAL_WINDOW_S = 30.0


@dataclass
class Upstream:
    """A one-slot model server: llama-server's API or Ollama's, paced."""

    tokens_per_s: float
    prompt_s: float
    ramble: bool = False
    ollama: bool = False

    def app(self) -> web.Application:
        self._slot = asyncio.Semaphore(1)
        app = web.Application()
        app.router.add_get("/health", self._ok)
        app.router.add_get("/", self._ok)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/api/chat", self._chat)
        return app

    async def _ok(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": "cpu"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        text = body["messages"][-1]["content"]
        limit = body.get("max_tokens") or body.get("options", {}).get("num_predict")
        tokens = limit if self.ramble else min(limit, math.ceil(len(text) / 4))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        async with self._slot:
            await response.prepare(request)
            await asyncio.sleep(self.prompt_s)
            for _ in range(tokens):
                await response.write(self._chunk("word "))
                await asyncio.sleep(1 / self.tokens_per_s)
            await response.write(self._end(tokens == limit))
        return response

    def _chunk(self, text: str) -> bytes:
        if self.ollama:
            return json.dumps({"message": {"content": text}, "done": False}).encode() + b"\n"
        delta = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
        return b"data: " + json.dumps(delta).encode() + b"\n\n"

    def _end(self, cut: bool) -> bytes:
        reason = "length" if cut else "stop"
        if self.ollama:
            return json.dumps({"done": True, "done_reason": reason}).encode() + b"\n"
        end = {"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}
        return b"data: " + json.dumps(end).encode() + b"\n\ndata: [DONE]\n\n"


@asynccontextmanager
async def served(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def writer(session: aiohttp.ClientSession, url: str, text: str) -> tuple[float, float]:
    """Seconds to the first `delta`, and to the end."""
    started = time.perf_counter()
    first = math.nan
    async with session.post(f"{url}/api/polish", json={"text": text, "stream": True}) as resp:
        async for line in resp.content:
            if line.startswith(b"event: delta") and math.isnan(first):
                first = time.perf_counter() - started
    return first, time.perf_counter() - started


async def scenario_runs(scenario: str, runs: int, scale: float) -> list[tuple[float, float]]:
    """One pollex for the scenario; a warm-up polish on each backend (so each has a mean
    service time, as a pollex that has been up for a while has), then `runs` runs."""
    primary = Upstream(PRIMARY_TPS * scale, PROMPT_S / scale, ramble=scenario.startswith("bound"))
    fallback = Upstream(FALLBACK_TPS * scale, PROMPT_S / scale, ollama=True)
    async with served(primary.app()) as gpu, served(fallback.app()) as cpu:
        settings: dict[str, Any] = {
            "llamacpp_url": gpu,
            "llamacpp_model": "gpu",
            "ollama_url": cpu,
            "ollama_model": "cpu",
            "rate_limit_per_minute": 100_000,
            "max_queue_wait_s": 10.0 / scale,
        }
        if scenario == "no capacity":
            settings.update(llamacpp_slots=100, ollama_slots=100, max_queue_wait_s=1e9)
        elif scenario == "spill off":
            settings.update(max_queue_wait_s=1e9)
        app = create_app(load_config(env={}, flags=settings))
        async with served(app) as url, aiohttp.ClientSession() as session:
            for model in ("gpu", "cpu"):
                body = {"text": "x" * 400, "model_id": model, "fallback": False}
                async with session.post(f"{url}/api/polish", json=body) as resp:
                    await resp.read()
            results: list[tuple[float, float]] = []
            for seed in range(runs):
                results += await one_run(session, url, seed, scale)
    return [(first * scale, total * scale) for first, total in results]


async def one_run(
    session: aiohttp.ClientSession, url: str, seed: int, scale: float
) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    arrivals = sorted(rng.uniform(0, ARRIVAL_WINDOW_S / scale) for _ in range(WRITERS))
    texts = ["x" * rng.randint(100, 800) for _ in range(WRITERS)]
    begin = time.perf_counter()

    async def arrive(at: float, text: str) -> tuple[float, float]:
        await asyncio.sleep(max(0.0, begin + at - time.perf_counter()))
        return await writer(session, url, text)

    return list(await asyncio.gather(*(arrive(a, t) for a, t in zip(arrivals, texts, strict=True))))


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main(runs: int, scale: float) -> None:
    configure_logging("console", "error")
    scenarios = ["no capacity", "spill off", "spill on", "bound off", "bound on"]
    print(
        f"Nano simulation: {WRITERS} writers per run, {runs} runs, time x{scale:g} "
        "(figures in Nano seconds)"
    )
    print("| scenario | TTFT p50 | TTFT p95 | total p50 | total p95 |")
    print("| --- | --- | --- | --- | --- |")
    for scenario in scenarios:
        if scenario == "bound off":
            saved = jobs.output_bound
            # pollex before issue 10: the setting alone bounds the output
            jobs.output_bound = lambda chars, max_output_tokens: max_output_tokens
        results = await scenario_runs(scenario, runs, scale)
        if scenario == "bound off":
            jobs.output_bound = saved
        firsts = [r[0] for r in results]
        totals = [r[1] for r in results]
        print(
            f"| {scenario} | {quantile(firsts, 0.5):.1f} s | {quantile(firsts, 0.95):.1f} s "
            f"| {quantile(totals, 0.5):.1f} s | {quantile(totals, 0.95):.1f} s |"
        )
        sys.stdout.flush()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--scale", type=float, default=20.0)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.scale))
