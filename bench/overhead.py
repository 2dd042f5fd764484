"""What pollex adds on top of llama-server: latency before the first token, CPU per token, RSS.

Run: python bench/overhead.py   (about 10-15 s; loopback only)

Set-up. Three processes on 127.0.0.1:

- a fake llama-server (this file, forked by multiprocessing, so its CPU is its own):
  `POST /v1/chat/completions` streams N OpenAI-style chunks
  `data: {"choices":[{"index":0,"delta":{"content":" word"},"finish_reason":null}]}`, one
  HTTP chunk each like llama-server, then a `finish_reason: "stop"` chunk and
  `data: [DONE]`, with no delay between them (unless asked to pace, see below);
  `GET /health` answers 200. The first line of the user message says what to send:
  `tokens=N pace_ms=P`.
- pollex, `pollex serve` as a subprocess, `POLLEX_LLAMACPP_URL` pointing at the fake,
  log level warning, rate limit out of the way.
- this process: one aiohttp ClientSession, reading SSE line by line.

Method.

1. Latency. After a warm-up, ~200 sequential requests alternate between the fake directly
   and pollex, so drift affects both alike. SSE: request sent -> first `event: delta`
   line from pollex, vs request sent -> first content `data:` line from the fake. JSON
   mode (pollex has no first token there; it streams from upstream and answers at the
   end): request sent -> whole JSON answer, vs request sent -> `[DONE]` from the fake.
   The direct request carries the same system prompt and text as pollex's upstream
   request. "Added" is the difference of the two distributions' quantiles (p50 - p50,
   p95 - p95), not a per-request difference.
2. CPU. pollex's utime+stime from /proc/<pid>/stat (all threads, clock ticks) around each
   batch. A batch of 1-token requests gives the fixed cost per request; the per-token
   cost is (batch CPU - requests x fixed cost) / tokens. The fake's CPU per token, taken
   the same way, is printed for scale: it is what one asyncio write per token costs.
3. RSS. VmRSS from /proc/<pid>/status once pollex answers /health (before any polish)
   and after all the load; VmHWM is the peak. RssFile is mostly shared libraries and
   code (libpython, libssl/libcrypto, C extensions), RssAnon the Python heap.

Caveats.

- With no pacing, tokens arrive faster than pollex reads them, so one socket read (and
  one event-loop wake-up) carries many chunks and per-token cost is amortised. A real
  model sends a token every 20-50 ms: each one is a wake-up, a read, a parse and a
  write of its own. The "paced" row (fake sleeps ~1 ms between tokens) shows that cost;
  it is mostly the kernel and the event loop, and varies by +-25% between pollex starts
  (in some, glibc serves asyncio's 256 KiB recv buffer by mmap/munmap on every read:
  python/cpython#85451).
- The fake's chunks are ~90 bytes; real llama-server chunks carry id/model/created/
  system_fingerprint (~260 bytes), so pollex's json.loads per token costs a bit more.
- Everything shares the machine's CPUs (see nproc): the latency numbers include
  scheduling between three processes, and loopback TCP, one extra hop each way being
  inherent to any proxy. The clock tick (usually 10 ms) bounds the CPU resolution; the
  batches are sized to make that a few percent at most.
- pollex's background prober (one GET /health every 5 s) is counted in its CPU; it is
  negligible at this scale.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any, NoReturn

import aiohttp
from aiohttp import web

from pollex.web.app import load_prompt

LATENCY_REQUESTS = 200
LATENCY_WARMUP = 30
LATENCY_TOKENS = 20
LOAD_REQUESTS = 50
LOAD_TOKENS = 2000
BASELINE_REQUESTS = 500
PACED_REQUESTS = 6
PACED_TOKENS = 500
PACED_MS = 1.0
START_TIMEOUT_S = 20.0

# A paragraph of the size people polish; pollex and the direct requests both carry it.
SAMPLE = (
    "i has went to the store yesterday and buyed three apple, but the cashier say "
    "that the card dont work so i had to pay with cash wich i almost never carry. "
    "anyway the apples was good and i will go back their next week probably."
)

WORD_CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":" word"},"finish_reason":null}]}\n\n'
STOP_CHUNK = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
DONE_CHUNK = b"data: [DONE]\n\n"
LLAMA_HEADERS = {
    "Server": "llama.cpp",
    "X-Accel-Buffering": "no",
    "Content-Type": "text/event-stream",
}


# --- the fake llama-server (runs in its own process) ------------------------------------


def _fake_options(body: Any) -> tuple[int, float]:
    """`tokens=N pace_ms=P` from the first line of the last message."""
    content = body["messages"][-1]["content"]
    options = dict(item.split("=", 1) for item in content.split("\n", 1)[0].split())
    return int(options.get("tokens", "1")), float(options.get("pace_ms", "0")) / 1000


async def _fake_chat(request: web.Request) -> web.StreamResponse:
    tokens, pace_s = _fake_options(await request.json())
    response = web.StreamResponse(status=200, headers=LLAMA_HEADERS)
    response.enable_chunked_encoding()
    await response.prepare(request)
    for index in range(tokens):
        if pace_s and index:
            await asyncio.sleep(pace_s)
        await response.write(WORD_CHUNK)
    await response.write(STOP_CHUNK)
    await response.write(DONE_CHUNK)
    await response.write_eof()
    return response


async def _fake_health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _fake_serve(report: Connection) -> None:
    app = web.Application()
    app.router.add_get("/health", _fake_health)
    app.router.add_post("/v1/chat/completions", _fake_chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    report.send(runner.addresses[0][1])
    report.close()
    await asyncio.Event().wait()


def fake_main(report: Connection) -> None:
    asyncio.run(_fake_serve(report))


# --- processes ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def fake_llama_server() -> Iterator[tuple[str, int]]:
    """The fake in a child process; yields its base URL and pid."""
    context = multiprocessing.get_context("fork")  # no event loop or threads yet
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=fake_main, args=(send,), daemon=True, name="fake-llama")
    process.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not receive.poll(0.05):
            if not process.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fake llama-server did not start")
        assert process.pid is not None
        yield f"http://127.0.0.1:{receive.recv()}", process.pid
    finally:
        process.terminate()
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join()


@dataclass
class Pollex:
    process: subprocess.Popen[bytes]
    url: str
    output: IO[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def fail(self, message: str) -> NoReturn:
        self.output.seek(0)
        tail = self.output.read().decode(errors="replace")[-3000:]
        raise RuntimeError(f"{message}\n--- pollex output ---\n{tail}")


@contextmanager
def pollex_server(upstream: str) -> Iterator[Pollex]:
    """`pollex serve` on a free loopback port, stopped (SIGTERM, then SIGKILL) on exit."""
    venv_bin = str(Path(sys.executable).parent)
    executable = shutil.which("pollex", path=venv_bin) or shutil.which("pollex")
    if executable is None:
        raise RuntimeError("the pollex command is not installed next to this Python")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLLEX_")}
    env.update(
        POLLEX_LLAMACPP_URL=upstream,
        POLLEX_FALLBACK="llamacpp",
        POLLEX_LOG_LEVEL="warning",
        POLLEX_RATE_LIMIT_PER_MINUTE="100000000",
    )
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            [executable, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            yield Pollex(process, f"http://127.0.0.1:{port}", output)
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# --- /proc ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (and its anonymous and file-backed parts) and VmHWM, in MiB."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


# --- one request each way ------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    first_s: float  # first token (SSE) or whole answer (JSON)
    total_s: float


def spec_text(tokens: int, pace_ms: float = 0.0) -> str:
    return f"tokens={tokens} pace_ms={pace_ms:g}\n{SAMPLE}"


def upstream_body(system_prompt: str, tokens: int) -> bytes:
    """What pollex would send the fake for the same polish (near enough)."""
    body = {
        "model": "llama.cpp",
        "messages": [
            {"role": "system", "content": system_prompt},
            {"role": "user", "content": spec_text(tokens)},
        ],
        "temperature": 0.0,
        "max_tokens": 1024,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    return json.dumps(body).encode()


def polish_body(tokens: int, *, stream: bool, pace_ms: float = 0.0) -> bytes:
    return json.dumps({"text": spec_text(tokens, pace_ms), "stream": stream}).encode()


JSON_HEADERS = {"Content-Type": "application/json"}


async def direct_stream(session: aiohttp.ClientSession, url: str, body: bytes) -> Timing:
    """POST to the fake; first content `data:` line and `[DONE]`."""
    started = time.perf_counter()
    first: float | None = None
    chunks = 0
    async with session.post(f"{url}/v1/chat/completions", data=body, headers=JSON_HEADERS) as resp:
        resp.raise_for_status()
        async for line in resp.content:
            if line.startswith(b"data: [DONE]"):
                break
            if line.startswith(b"data: ") and b'"content"' in line:
                chunks += 1
                if first is None:
                    first = time.perf_counter()
        ended = time.perf_counter()
    if first is None or not chunks:
        raise RuntimeError("the fake sent no content")
    return Timing(first - started, ended - started)


async def pollex_sse(
    session: aiohttp.ClientSession, url: str, tokens: int, pace_ms: float = 0.0
) -> Timing:
    """POST /api/polish with stream=true; first `event: delta` line and the `done` event."""
    body = polish_body(tokens, stream=True, pace_ms=pace_ms)
    started = time.perf_counter()
    first: float | None = None
    deltas = 0
    last_event = b""
    async with session.post(f"{url}/api/polish", data=body, headers=JSON_HEADERS) as resp:
        resp.raise_for_status()
        async for line in resp.content:
            if line.startswith(b"event: "):
                last_event = line[7:].strip()
                if last_event == b"delta":
                    deltas += 1
                    if first is None:
                        first = time.perf_counter()
        ended = time.perf_counter()
    if first is None or deltas != tokens or last_event != b"done":
        raise RuntimeError(f"pollex SSE: {deltas} deltas of {tokens}, last event {last_event!r}")
    return Timing(first - started, ended - started)


async def pollex_json(session: aiohttp.ClientSession, url: str, tokens: int) -> Timing:
    """POST /api/polish with stream=false; the whole JSON answer."""
    started = time.perf_counter()
    async with session.post(
        f"{url}/api/polish", data=polish_body(tokens, stream=False), headers=JSON_HEADERS
    ) as resp:
        resp.raise_for_status()
        answer = json.loads(await resp.read())
    ended = time.perf_counter()
    if answer["polished"].count("word") != tokens:
        raise RuntimeError("pollex JSON: answer does not hold every token")
    return Timing(ended - started, ended - started)


# --- measurements --------------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    direct_ms: list[float]
    pollex_ms: list[float]


def quantile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


async def measure_latency(
    session: aiohttp.ClientSession, upstream: str, pollex: str, system_prompt: str, *, sse: bool
) -> Latency:
    """Alternate direct and pollex requests; SSE: first token, JSON: whole answer."""
    body = upstream_body(system_prompt, LATENCY_TOKENS)
    direct: list[float] = []
    via: list[float] = []
    for index in range(LATENCY_WARMUP + LATENCY_REQUESTS):
        plain = await direct_stream(session, upstream, body)
        if sse:
            proxied = (await pollex_sse(session, pollex, LATENCY_TOKENS)).first_s
            straight = plain.first_s
        else:
            proxied = (await pollex_json(session, pollex, LATENCY_TOKENS)).first_s
            straight = plain.total_s
        if index >= LATENCY_WARMUP:
            direct.append(straight * 1000)
            via.append(proxied * 1000)
    return Latency(direct, via)


@dataclass(frozen=True)
class CpuCost:
    """CPU seconds one batch of requests cost pollex, and the fake for scale."""

    requests: int
    tokens: int
    pollex_s: float
    fake_s: float


@dataclass(frozen=True)
class Procs:
    pollex: Pollex
    fake_pid: int


async def measure_cpu(
    session: aiohttp.ClientSession,
    procs: Procs,
    requests: int,
    tokens: int,
    *,
    sse: bool,
    pace_ms: float = 0.0,
) -> CpuCost:
    pollex = procs.pollex
    pollex_before, fake_before = cpu_seconds(pollex.pid), cpu_seconds(procs.fake_pid)
    for _ in range(requests):
        if sse:
            await pollex_sse(session, pollex.url, tokens, pace_ms)
        else:
            await pollex_json(session, pollex.url, tokens)
    return CpuCost(
        requests,
        tokens,
        cpu_seconds(pollex.pid) - pollex_before,
        cpu_seconds(procs.fake_pid) - fake_before,
    )


def per_token_us(load: CpuCost, base: CpuCost, *, fake: bool = False) -> float:
    """CPU per token once the fixed cost per request (from `base`) is taken out."""
    load_s, base_s = (load.fake_s, base.fake_s) if fake else (load.pollex_s, base.pollex_s)
    fixed_s = base_s / base.requests * load.requests
    return (load_s - fixed_s) / (load.requests * load.tokens) * 1e6


async def wait_ready(session: aiohttp.ClientSession, pollex: Pollex) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if pollex.process.poll() is not None:
            pollex.fail(f"pollex exited with status {pollex.process.returncode}")
        try:
            async with session.get(f"{pollex.url}/health") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    pollex.fail("pollex did not answer /health in time")


@dataclass
class Results:
    rss_idle: dict[str, float]
    rss_loaded: dict[str, float]
    sse: Latency
    json: Latency
    base_sse: CpuCost
    base_json: CpuCost
    loads: list[tuple[str, CpuCost, CpuCost]]  # (label, load, the baseline it is net of)


async def run(upstream: str, procs: Procs) -> Results:
    pollex = procs.pollex
    system_prompt = load_prompt("")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        await wait_ready(session, pollex)
        await asyncio.sleep(0.5)  # let start-up settle (first probe, lazy imports)
        rss_idle = memory_mb(pollex.pid)

        sse = await measure_latency(session, upstream, pollex.url, system_prompt, sse=True)
        json_mode = await measure_latency(session, upstream, pollex.url, system_prompt, sse=False)

        base_sse = await measure_cpu(session, procs, BASELINE_REQUESTS, 1, sse=True)
        base_json = await measure_cpu(session, procs, BASELINE_REQUESTS, 1, sse=False)
        burst_sse = await measure_cpu(session, procs, LOAD_REQUESTS, LOAD_TOKENS, sse=True)
        burst_json = await measure_cpu(session, procs, LOAD_REQUESTS, LOAD_TOKENS, sse=False)
        paced = await measure_cpu(
            session, procs, PACED_REQUESTS, PACED_TOKENS, sse=True, pace_ms=PACED_MS
        )
        await asyncio.sleep(0.2)
        rss_loaded = memory_mb(pollex.pid)
    loads = [
        ("SSE   no pacing", burst_sse, base_sse),
        ("JSON  no pacing", burst_json, base_json),
        (f"SSE   paced {PACED_MS:g} ms/token", paced, base_sse),
    ]
    return Results(rss_idle, rss_loaded, sse, json_mode, base_sse, base_json, loads)


# --- report --------------------------------------------------------------------------------


def report(results: Results, elapsed_s: float) -> None:
    cpus = len(os.sched_getaffinity(0))
    print(
        f"pollex overhead  |  nproc {cpus}, {cpu_model()}  |  Python {platform.python_version()}"
        f", aiohttp {aiohttp.__version__}  |  run {elapsed_s:.0f} s"
    )
    print()
    print(f"latency, ms ({LATENCY_REQUESTS} sequential requests, {LATENCY_TOKENS} tokens each)")
    print(f"  {'':28}{'direct':>15}{'via pollex':>17}{'added':>17}")
    print(f"  {'':28}{'p50':>7}{'p95':>8}{'p50':>9}{'p95':>8}{'p50':>9}{'p95':>8}")
    for label, latency in (
        ("SSE   to first delta", results.sse),
        ("JSON  to whole answer", results.json),
    ):
        d50, d95 = quantile(latency.direct_ms, 50), quantile(latency.direct_ms, 95)
        p50, p95 = quantile(latency.pollex_ms, 50), quantile(latency.pollex_ms, 95)
        print(
            f"  {label:28}{d50:7.3f}{d95:8.3f}{p50:9.3f}{p95:8.3f}{p50 - d50:9.3f}{p95 - d95:8.3f}"
        )
    print()
    print("pollex CPU (utime+stime); the fake llama-server's own CPU for scale")
    print(
        f"  {'':28}{'requests x tokens':>18}{'CPU s':>8}{'us/request':>12}{'us/token':>10}", end=""
    )
    print(f"{'fake us/token':>15}")
    for label, base in (("SSE   1 token", results.base_sse), ("JSON  1 token", results.base_json)):
        shape = f"{base.requests} x {base.tokens}"
        per_request = base.pollex_s / base.requests * 1e6
        print(f"  {label:28}{shape:>18}{base.pollex_s:8.2f}{per_request:12.0f}")
    for label, load, base in results.loads:
        shape = f"{load.requests} x {load.tokens}"
        print(
            f"  {label:28}{shape:>18}{load.pollex_s:8.2f}{'':12}{per_token_us(load, base):10.1f}"
            f"{per_token_us(load, base, fake=True):15.1f}"
        )
    print()
    idle, loaded = results.rss_idle, results.rss_loaded
    print(
        f"pollex RSS, MiB: idle after start {idle['VmRSS']:.1f}"
        f" (anon {idle['RssAnon']:.1f}, files {idle['RssFile']:.1f}),"
        f" after the load {loaded['VmRSS']:.1f}, peak {loaded['VmHWM']:.1f}"
    )


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so the finally blocks still run
    started = time.perf_counter()
    with ExitStack() as stack:
        upstream, fake_pid = stack.enter_context(fake_llama_server())
        pollex = stack.enter_context(pollex_server(upstream))
        results = asyncio.run(run(upstream, Procs(pollex, fake_pid)))
        if pollex.process.poll() is not None:
            pollex.fail("pollex died during the run")
    report(results, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
