"""What tests share besides fixtures: fast settings, adapter factories, SSE readers, pollex's
state and metrics, raw sockets, child processes.

Fixtures live in conftest.py; everything a test imports by name lives here (a test module
imports neither a conftest.py nor another test module).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import pty
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import aiohttp
import httpx
import httpx_sse
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from pollex.adapters import Adapter, ChatRequest, Finish
from pollex.adapters.claude import ClaudeAdapter
from pollex.adapters.llamacpp import LlamaCppAdapter
from pollex.adapters.mock import MockAdapter
from pollex.adapters.ollama import OllamaAdapter
from pollex.config import Config, load_config
from pollex.errors import UpstreamError
from pollex.server import serve
from pollex.web.keys import BACKENDS, METRICS, ROUTER

# Small intervals so failover, recovery and keep-alive are seen in milliseconds.
FAST = {
    "probe_interval_s": 0.05,
    "probe_interval_down_s": 0.02,
    "probe_timeout_s": 0.3,
    "connect_timeout_s": 0.5,
    "keepalive_s": 5.0,
    "first_token_timeout_s": 5.0,
    "idle_timeout_s": 5.0,
    "request_timeout_s": 10.0,
    "stream_timeout_s": 10.0,
    "log_format": "console",
    "rate_limit_per_minute": 10000,
}


def fast_config(**overrides: Any) -> Config:
    """Settings as `pollex serve` would read them (same coercion and checks), made fast."""
    return load_config(env={}, flags={**FAST, **overrides})


# --- adapters, built with the defaults of Config ----------------------------------------

DEFAULTS = Config()
SYSTEM = "Fix grammar. Output only the corrected text."
TEXT = "i goes to store yesterday"
CHAT = ChatRequest.polish(TEXT, SYSTEM, 64)


def _limits(provider: str, overrides: dict[str, Any]) -> dict[str, Any]:
    limits: dict[str, Any] = {
        "first_token_timeout_s": DEFAULTS.first_token_timeout(provider),
        "max_line_bytes": DEFAULTS.max_upstream_line_bytes,
    }
    return {**limits, **overrides}


def llamacpp(
    session: aiohttp.ClientSession, url: str, model: str = DEFAULTS.llamacpp_model, **limits: Any
) -> LlamaCppAdapter:
    """A llama-server adapter at `url`, with Config's defaults unless `limits` say otherwise."""
    return LlamaCppAdapter(session, url, model, **_limits("llamacpp", limits))


def ollama(
    session: aiohttp.ClientSession, url: str, model: str = DEFAULTS.ollama_model, **limits: Any
) -> OllamaAdapter:
    """An Ollama adapter at `url`, with Config's defaults unless `limits` say otherwise."""
    return OllamaAdapter(session, url, model, **_limits("ollama", limits))


def claude(
    session: aiohttp.ClientSession,
    url: str,
    model: str = "claude-test",
    *,
    api_key: str = "sk-ant-test",
    **limits: Any,
) -> ClaudeAdapter:
    """A Claude adapter at `url`, with Config's defaults unless `limits` say otherwise."""
    return ClaudeAdapter(session, url, model, api_key=api_key, **_limits("claude", limits))


def mock_adapter(delay_s: float = 0.0, first_token_timeout_s: float = 60.0) -> MockAdapter:
    """The model-free adapter, pacing its words by `delay_s`."""
    return MockAdapter(first_token_timeout_s=first_token_timeout_s, delay_s=delay_s)


async def collect(adapter: Adapter, chat: ChatRequest = CHAT) -> tuple[list[str], Finish]:
    """The chunks of one whole stream, and how it finished."""
    finish = Finish()
    return [chunk async for chunk in adapter.stream(chat, finish)], finish


async def collect_error(adapter: Adapter) -> tuple[list[str], UpstreamError]:
    """The chunks that arrived before the stream failed, and the failure."""
    chunks: list[str] = []
    with pytest.raises(UpstreamError) as info:
        async for chunk in adapter.stream(CHAT, Finish()):
            chunks.append(chunk)
    return chunks, info.value


async def cancel_after_first_chunk(chunks: AsyncIterator[str]) -> None:
    """Read `chunks` in a task of its own and cancel it once the first chunk arrived: the
    task must end cancelled (the stream does not swallow the cancellation)."""
    got_first = asyncio.Event()

    async def consume() -> None:
        async for _ in chunks:
            got_first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_first.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# --- pollex's own SSE, read by a parser pollex did not write ----------------------------


@dataclasses.dataclass
class Event:
    """One SSE event of pollex's: its name and its JSON data."""

    event: str
    data: Any


async def sse_events(url: str, body: dict[str, Any], **headers: str) -> AsyncIterator[Event]:
    """Events of one SSE polish, read by httpx-sse."""
    async with (
        httpx.AsyncClient(timeout=10) as client,
        httpx_sse.aconnect_sse(client, "POST", url, json=body, headers=headers) as source,
    ):
        assert source.response.headers["content-type"].startswith("text/event-stream")
        async for sse in source.aiter_sse():
            yield Event(sse.event, json.loads(sse.data))


async def collect_events(url: str, body: dict[str, Any]) -> list[Event]:
    """All the events of one SSE polish."""
    return [event async for event in sse_events(url, body)]


async def stream_until(
    session: aiohttp.ClientSession, url: str | URL, body: dict[str, Any], marker: bytes
) -> tuple[aiohttp.ClientResponse, bytes]:
    """POST `body` to `url` and read the streamed answer until `marker` has come: the
    response, still open, and what was read of it."""
    resp = await session.post(url, json=body)
    received = b""
    while marker not in received:
        chunk = await resp.content.readany()
        assert chunk, f"the stream ended before {marker!r}: {received!r}"
        received += chunk
    return resp, received


# --- pollex in this process, and its state ---------------------------------------------

# pollex on loopback, as the `pollex` fixture starts it.
Client = TestClient[web.Request, web.Application]

GPU = "qwen2.5:1.5b-gpu"  # the model ids of jetson/config.yaml: llama-server first,
CPU = "qwen2.5:1.5b"  # Ollama as the fallback
OLLAMA_TEXT = "I went to the store yesterday."  # what FakeOllama answers (fakes.WORDS)


def url_of(server: Client | TestServer) -> str:
    """The base URL of a test client's or test server's pollex, without a trailing slash."""
    return str(server.make_url("")).rstrip("/")


async def eventually(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    """Wait until `predicate()` holds, failing the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def health_of(client: Client) -> dict[str, Any]:
    """The body of /api/health."""
    resp = await client.get("/api/health")
    body: dict[str, Any] = await resp.json()
    return body


async def polish(client: Client, **body: Any) -> tuple[int, dict[str, Any]]:
    """One JSON polish of "i go store" (or what `body` says): the status and the body."""
    resp = await client.post("/api/polish", json={"text": "i go store", **body})
    return resp.status, await resp.json()


def routable(client: Client, model_id: str) -> bool:
    """Whether the router would send a request to `model_id` (some host of it is not
    known to be down)."""
    app = client.app
    return bool(app[ROUTER].routable(app[BACKENDS].by_id[model_id]))


def sample(client: Client, name: str, **labels: str) -> float:
    """A sample of pollex's metrics registry; 0 when the series does not exist."""
    return client.app[METRICS].registry.get_sample_value(name, labels) or 0.0


def failovers(client: Client, source: str, target: str) -> float:
    """How often a request failed over from model `source` to model `target`."""
    return sample(client, "pollex_failovers_total", from_adapter=source, to_adapter=target)


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples of a /metrics scrape: (name, sorted labels) -> value."""
    return {
        (one.name, tuple(sorted(one.labels.items()))): one.value
        for family in text_string_to_metric_families(text)
        for one in family.samples
    }


@contextlib.asynccontextmanager
async def sdk(client: Client, api_key: str = "unused") -> AsyncIterator[openai.AsyncOpenAI]:
    """The official OpenAI SDK, pointed at pollex's /v1 (no retries)."""
    base_url = str(client.make_url("/v1"))
    async with openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0) as api:
        yield api


class Serving(NamedTuple):
    """`pollex.server.serve` running in this loop: set `stop` to end it, then `task` ends."""

    stop: asyncio.Event
    task: asyncio.Task[None]
    url: str

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


async def start_serving(**settings: Any) -> Serving:
    """pollex as `pollex serve` runs it (same runner and connections), fast settings and
    `settings`, on a free loopback port: returned once it answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    stop = asyncio.Event()
    task = asyncio.create_task(serve(fast_config(port=port, **settings), stop))
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            try:
                async with session.get(f"{url}/health"):
                    return Serving(stop, task, url)
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.01)
    raise AssertionError("pollex did not start")


# --- raw sockets --------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port where nothing listens (yet)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass
class Reply:
    """What a raw client saw: the bytes, how the connection ended, and when."""

    data: bytes
    ended: str  # "eof", "reset" or "open" (still open when the client gave up)
    after_s: float

    @property
    def status(self) -> int:
        return int(self.data.split(b" ", 2)[1])

    @property
    def headers(self) -> dict[str, str]:
        head = self.data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        lines = head.split("\r\n")[1:]
        return {name.lower(): value.strip() for name, _, value in (h.partition(":") for h in lines)}

    @property
    def body(self) -> bytes:
        return self.data.split(b"\r\n\r\n", 1)[1]

    def json(self) -> Any:
        return json.loads(self.body)


async def read_until_closed(reader: asyncio.StreamReader, give_up_s: float) -> Reply:
    """Everything the server sends until it closes the connection (or `give_up_s`)."""
    started = time.monotonic()
    deadline = started + give_up_s
    data = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), deadline - time.monotonic()):
            data += chunk
        ended = "eof"
    except ConnectionError:  # reset, or a broken pipe the writing side saw first
        ended = "reset"
    except asyncio.TimeoutError:
        ended = "open"
    return Reply(data, ended, time.monotonic() - started)


@contextlib.contextmanager
def notify_socket(folder: Path, timeout_s: float) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket where systemd would listen for `sd_notify` (its path is what
    NOTIFY_SOCKET says), receiving with `timeout_s`: the socket and its path."""
    path = str(folder / "notify.sock")
    assert len(path) < 100, "AF_UNIX paths are limited to 108 bytes"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(timeout_s)
        yield sock, path


@dataclasses.dataclass
class RawClient:
    """A client of the server at host:port that writes bytes, not requests."""

    host: str
    port: int

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection of its own."""
        return await asyncio.open_connection(self.host, self.port)

    async def send(self, data: bytes, *, give_up_s: float = 3.0) -> Reply:
        """Send `data` at once, then read until the server closes (or `give_up_s`)."""
        reader, writer = await self.connect()
        writer.write(data)
        try:
            return await read_until_closed(reader, give_up_s)
        finally:
            writer.close()


# --- child processes ----------------------------------------------------------------------


class Terminal:
    """A pseudo-terminal for a child's output: it writes to `fd`, `shown()` is what it
    showed; both ends are closed when the `with` block ends."""

    def __init__(self) -> None:
        self._leader, self.fd = pty.openpty()

    def __enter__(self) -> Terminal:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        os.close(self._leader)
        os.close(self.fd)

    def shown(self) -> bytes:
        """What was written so far (up to 64 KiB), without waiting for more."""
        os.set_blocking(self._leader, False)
        return os.read(self._leader, 65536)


@dataclasses.dataclass
class PollexProcess:
    """A running `pollex serve` child process, and the JSON lines it has logged so far."""

    url: str
    process: subprocess.Popen[str]
    lines: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    reader: threading.Thread = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.reader = threading.Thread(target=self._read_lines)
        self.reader.start()

    def _read_lines(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(raw))

    def access_log(self, request_id: str, timeout_s: float = 5.0) -> dict[str, Any]:
        """The one `request` line of that request, once it is written."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if line.get("event") == "request" and line.get("request_id") == request_id:
                    return line
            time.sleep(0.02)
        raise AssertionError(f"no access-log line for request {request_id}")


# --- files ----------------------------------------------------------------------------------


def words(text: str) -> list[str]:
    """The whitespace-separated words of text (long lists stay compact)."""
    return text.split()


def tree_hash(root: Path) -> str:
    """Hash of every file's relative path, mode and content under root."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0")
            h.update(oct(p.stat().st_mode & 0o777).encode() + b"\0")
            h.update(p.read_bytes() + b"\0")
    return h.hexdigest()
