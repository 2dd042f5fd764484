"""Slow, half-open and malformed clients against `pollex.server.serve`, over raw sockets.

The server runs as `pollex serve` runs it (the same runner and connections), on a free
loopback port, with deadlines in tenths of a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from fakes import closed_port_url
from helpers import fast_config

from pollex.server import serve


@dataclass
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


@dataclass
class Pollex:
    host: str
    port: int

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port)

    async def send(self, data: bytes, *, give_up_s: float = 2.0) -> Reply:
        """Send `data` at once, then read until the server closes (or `give_up_s`)."""
        reader, writer = await self.connect()
        writer.write(data)
        try:
            return await read_until_closed(reader, give_up_s)
        finally:
            writer.close()


async def read_until_closed(reader: asyncio.StreamReader, give_up_s: float) -> Reply:
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


async def read_response(reader: asyncio.StreamReader) -> Reply:
    """One whole response with a Content-Length, leaving the connection open."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    reply = Reply(head, "open", 0.0)
    body = await reader.readexactly(int(reply.headers["content-length"]))
    return Reply(head + body, "open", 0.0)


@contextlib.asynccontextmanager
async def serving(**settings: Any) -> AsyncIterator[Pollex]:
    url = closed_port_url()
    port = int(url.rsplit(":", 1)[1])
    stop = asyncio.Event()
    task = asyncio.create_task(serve(fast_config(mock=True, port=port, **settings), stop))
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(f"{url}/health"):
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.01)
        yield Pollex("127.0.0.1", port)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


# --- the body's deadline (issue 9, item 3) ---------------------------------------------


async def test_body_that_stops_coming_gets_a_json_408() -> None:
    request = (
        b"POST /api/polish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"text": "i go'
    )
    async with serving(body_timeout_s=0.3) as pollex:
        reader, writer = await pollex.connect()
        writer.write(request)
        started = time.monotonic()
        reply = await read_response(reader)
        answered_after_s = time.monotonic() - started
        writer.close()

    assert 0.2 < answered_after_s < 1.0
    assert reply.status == 408
    assert reply.json() == {"error": "request body not received in time"}
    assert reply.headers["connection"] == "close"


async def test_a_declared_body_over_the_limit_is_413_without_waiting_for_it() -> None:
    request = (
        b"POST /api/polish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000000\r\n\r\n"
    )
    async with serving(body_timeout_s=5) as pollex:
        reader, writer = await pollex.connect()
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 1)
        writer.close()

    assert head.startswith(b"HTTP/1.1 413")
