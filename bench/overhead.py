"""What pollex costs on top of the model: time to first token, total time, CPU, memory.

Run: python bench/overhead.py [--rounds N] [--clients C] [--tokens T] [--pace-ms P]
                              [--loop asyncio|uvloop] [--smoke]

Three processes on 127.0.0.1:

- a fake llama-server (this file, in its own process, so its CPU is its own): streams
  `--tokens` chunks `--pace-ms` apart, each as llama-server frames them (one HTTP chunk
  per `data:` line, ~260 bytes with id, model, created and system_fingerprint), then the
  finish chunk with usage and timings, then `data: [DONE]`. Its `/props` says it has 512
  slots, so pollex sends every client on at once, as it would to a server with as many;
- pollex (`python -m pollex serve`, this interpreter, `--loop` event loop) in front of it;
- this process: the clients, one aiohttp session, reading each stream line by line.

Each figure is measured against the same clients reading the fake directly, in the same
run, rounds interleaved (direct, pollex, direct, ...) so that drift affects both alike:
time to first token (request sent -> first text line), total time (-> end of body),
with 1 client in turn and with `--clients` at once. pollex's CPU is read from /proc for
its rounds only (utime + stime) and divided by the tokens it streamed. While the
concurrent rounds run, another client asks `/api/health` in a loop. Memory is VmRSS once
pollex answers health (idle) and VmHWM at the end (peak). "Ready" is from starting the
process to its first answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

MODEL = "qwen2.5-1.5b-gpu"
TICK = os.sysconf("SC_CLK_TCK")


# --- the fake llama-server ----------------------------------------------------------------


def chunk(content: str) -> bytes:
    body = {
        "choices": [{"finish_reason": None, "index": 0, "delta": {"content": content}}],
        "created": 1767225600,
        "id": "chatcmpl-Xb3sQvZ1Tq9kH8fN2mC4pR7wL0aE5dGy",
        "model": MODEL,
        "system_fingerprint": "b5050-23106f94",
        "object": "chat.completion.chunk",
    }
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def final_chunk(tokens: int) -> bytes:
    body = {
        "choices": [{"finish_reason": "stop", "index": 0, "delta": {}}],
        "created": 1767225600,
        "id": "chatcmpl-Xb3sQvZ1Tq9kH8fN2mC4pR7wL0aE5dGy",
        "model": MODEL,
        "object": "chat.completion.chunk",
        "usage": {"completion_tokens": tokens, "prompt_tokens": 40, "total_tokens": 40 + tokens},
        "timings": {"prompt_n": 40, "predicted_n": tokens, "predicted_per_second": 5.0},
    }
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\ndata: [DONE]\n\n"


def serve_fake(conn: Connection) -> None:
    async def main() -> None:
        async def health(request: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        async def props(request: web.Request) -> web.Response:
            settings = {"n_ctx": 8192}
            return web.json_response({"total_slots": 512, "default_generation_settings": settings})

        async def chat(request: web.Request) -> web.StreamResponse:
            body = await request.json()
            spec = dict(part.split("=") for part in body["messages"][-1]["content"].split())
            tokens, pace = int(spec["tokens"]), float(spec["pace_ms"]) / 1000
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            word = chunk(" word")
            for index in range(tokens):
                if pace and index:
                    await asyncio.sleep(pace)
                await response.write(word)
            await response.write(final_chunk(tokens))
            await response.write_eof()
            return response

        app = web.Application()
        app.router.add_get("/health", health)
        app.router.add_get("/props", props)
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        conn.send(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        await asyncio.Event().wait()

    asyncio.run(main())


# --- pollex ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Pollex:
    process: subprocess.Popen[bytes]
    url: str
    ready_s: float

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def memory_mib(self, key: str) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        raise LookupError(key)


@contextmanager
def pollex(fake_url: str, loop: str) -> Iterator[Pollex]:
    port = free_port()
    env = {
        **os.environ,
        "POLLEX_LLAMACPP_URL": fake_url,
        "POLLEX_LLAMACPP_MODEL": MODEL,
        "POLLEX_RATE_LIMIT_PER_MINUTE": "10000000",
        "POLLEX_LOG_LEVEL": "warning",
        "POLLEX_MAX_OUTPUT_TOKENS": "100000",
    }
    env.pop("POLLEX_API_KEY", None)
    code = "from pollex.cli import main; raise SystemExit(main())"
    if loop == "uvloop":
        code = "import uvloop; uvloop.install(); " + code
    command = [sys.executable, "-c", code, "serve", "--port", str(port)]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.05) as sock:
                    sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
                    if sock.recv(12).startswith(b"HTTP/1.1 "):
                        break
            except OSError:
                if process.poll() is not None:
                    raise SystemExit("pollex did not start") from None
                time.sleep(0.002)
        yield Pollex(process, url, time.perf_counter() - started)
    finally:
        process.terminate()
        process.wait(10)


# --- the clients ----------------------------------------------------------------------------


@dataclass
class Timing:
    first_s: float
    total_s: float


async def one_stream(session: aiohttp.ClientSession, url: str, direct: bool, spec: str) -> Timing:
    if direct:
        endpoint, marker = f"{url}/v1/chat/completions", b'data: {"choices"'
        body: dict[str, Any] = {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "Fix it."},
                {"role": "user", "content": spec},
            ],
            "stream": True,
        }
    else:
        endpoint, marker = f"{url}/api/polish", b"event: delta"
        body = {"text": spec, "stream": True}
    started = time.perf_counter()
    first = 0.0
    async with session.post(endpoint, json=body) as resp:
        assert resp.status == 200, await resp.text()
        async for line in resp.content:
            if not first and line.startswith(marker):
                first = time.perf_counter() - started
    return Timing(first, time.perf_counter() - started)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Side:
    firsts: list[float] = field(default_factory=list)
    totals: list[float] = field(default_factory=list)

    def add(self, timings: list[Timing]) -> None:
        self.firsts += [t.first_s for t in timings]
        self.totals += [t.total_s for t in timings]


async def measure(args: argparse.Namespace, fake_url: str) -> dict[str, Any]:
    spec = f"tokens={args.tokens} pace_ms={args.pace_ms}"
    connector = aiohttp.TCPConnector(limit=0)
    results: dict[str, Any] = {}
    with pollex(fake_url, args.loop) as server:
        await asyncio.sleep(0.2)  # the first probe round
        results["idle_rss"] = server.memory_mib("VmRSS")
        results["ready_s"] = server.ready_s
        async with aiohttp.ClientSession(connector=connector) as session:
            for _ in range(3):  # warm both paths up (imports, connections)
                await one_stream(session, server.url, False, spec)
                await one_stream(session, fake_url, True, spec)
            single = {True: Side(), False: Side()}
            cpu_single = 0.0
            for _ in range(args.rounds):
                for direct in (True, False):
                    before = server.cpu_s()
                    timing = await one_stream(
                        session, fake_url if direct else server.url, direct, spec
                    )
                    if not direct:
                        cpu_single += server.cpu_s() - before
                    single[direct].add([timing])
            crowd = {True: Side(), False: Side()}
            cpu_crowd = 0.0
            health: list[float] = []
            for _ in range(max(2, args.rounds // 10)):
                for direct in (True, False):
                    url = fake_url if direct else server.url
                    before = server.cpu_s()
                    streams = [
                        asyncio.create_task(one_stream(session, url, direct, spec))
                        for _ in range(args.clients)
                    ]
                    if not direct:
                        health += await ask_health(session, server.url, streams)
                    crowd[direct].add(await asyncio.gather(*streams))
                    if not direct:
                        cpu_crowd += server.cpu_s() - before
        results["peak_rss"] = server.memory_mib("VmHWM")
    tokens_single = args.rounds * args.tokens
    tokens_crowd = len(crowd[False].totals) * args.tokens
    results.update(single=single, crowd=crowd, health=health)
    results["cpu_single"] = cpu_single / tokens_single * 1000
    results["cpu_crowd"] = cpu_crowd / tokens_crowd * 1000
    return results


async def ask_health(
    session: aiohttp.ClientSession, url: str, streams: list[asyncio.Task[Timing]]
) -> list[float]:
    """`/api/health` answered while the streams run, one request after the other."""
    times: list[float] = []
    await asyncio.sleep(0.005)
    while not all(s.done() for s in streams):
        started = time.perf_counter()
        async with session.get(f"{url}/api/health") as resp:
            await resp.read()
        times.append(time.perf_counter() - started)
        await asyncio.sleep(0.002)
    return times


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def report(args: argparse.Namespace, r: dict[str, Any]) -> str:
    single, crowd = r["single"], r["crowd"]
    added = [
        quantile(single[False].firsts, q) - quantile(single[True].firsts, q) for q in (0.5, 0.99)
    ]
    crowd_added = quantile(crowd[False].firsts, 0.5) - quantile(crowd[True].firsts, 0.5)
    ratio = quantile(crowd[False].totals, 0.5) / quantile(crowd[True].totals, 0.5)
    health = r["health"] or [float("nan")]
    rows = [
        ("TTFT added, p50 / p99, 1 client", f"{ms(added[0])} / {ms(added[1])}"),
        (f"TTFT added, p50, {args.clients} clients", ms(crowd_added)),
        (f"total time vs direct, p50, {args.clients} clients", f"{ratio:.3f}x"),
        (
            f"pollex CPU per 1,000 tokens, 1 / {args.clients} clients",
            f"{r['cpu_single']:.3f} / {r['cpu_crowd']:.3f} s",
        ),
        ("idle / peak RSS", f"{r['idle_rss']:.1f} / {r['peak_rss']:.1f} MiB"),
        ("ready after start", f"{r['ready_s']:.2f} s"),
        (
            f"/api/health p50 / p99, {args.clients} streams in flight",
            f"{ms(quantile(health, 0.5))} / {ms(quantile(health, 0.99))}",
        ),
    ]
    head = (
        f"pollex overhead: {args.tokens} tokens {args.pace_ms:g} ms apart, {args.rounds} rounds, "
        f"{args.clients} clients, loop {args.loop}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs\n"
        f"direct TTFT p50 {ms(quantile(single[True].firsts, 0.5))}, "
        f"total p50 {ms(quantile(single[True].totals, 0.5))} (1 client); "
        f"{ms(quantile(crowd[True].firsts, 0.5))}, "
        f"{ms(quantile(crowd[True].totals, 0.5))} ({args.clients} clients)\n\n"
    )
    table = "| figure | pollex |\n| --- | --- |\n" + "".join(f"| {a} | {b} |\n" for a, b in rows)
    return head + table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--pace-ms", type=float, default=5.0)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--smoke", action="store_true", help="a few rounds, to see it works")
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.clients, args.tokens, args.pace_ms = 4, 4, 8, 1.0
    receive, send = multiprocessing.Pipe(duplex=False)
    fake = multiprocessing.Process(target=serve_fake, args=(send,), daemon=True)
    fake.start()
    try:
        fake_url = f"http://127.0.0.1:{receive.recv()}"
        print(report(args, asyncio.run(measure(args, fake_url))))
    finally:
        fake.terminate()


if __name__ == "__main__":
    main()
