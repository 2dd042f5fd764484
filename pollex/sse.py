"""Server-Sent Events to pollex's clients: the wire format and the keep-alive.

Written by hand rather than with aiohttp-sse: its ping is periodic whatever was written
and is spelled `: ping`, which Continue's parser mistakes for the end of a message
(upstreams.md §4); pollex sends `: keep-alive` only after `keepalive_s` of silence.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

KEEPALIVE = b": keep-alive\n\n"
HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


# Built once: json.dumps with keyword arguments builds a new encoder on every call.
dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def encode(event: str | None, data: Any) -> bytes:
    """One event; `data` is JSON-encoded, or sent as is when it is already a string."""
    payload = data if isinstance(data, str) else dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


class EventStream:
    """An SSE response whose headers go out at once and that never stays silent long."""

    def __init__(self, request: web.Request, keepalive_s: float) -> None:
        self._request = request
        self._keepalive_s = keepalive_s
        self.response = web.StreamResponse(status=200, headers=HEADERS)
        self._loop = asyncio.get_running_loop()
        self._last_write = self._loop.time()
        self._keepalive: asyncio.Task[None] | None = None

    async def open(self) -> None:
        await self.response.prepare(self._request)
        self._keepalive = asyncio.create_task(self._keep_alive())

    async def send(self, event: str | None, data: Any) -> None:
        await self.write(encode(event, data))

    async def write(self, raw: bytes) -> None:
        self._last_write = self._loop.time()
        await self.response.write(raw)

    async def finish(self, last: bytes, timeout_s: float) -> None:
        """Send the last event and end the body; cut off a client that cannot take it.

        Bounded because a client that stopped reading (but keeps its socket open) would
        otherwise hold this handler, and everything it references, for ever. A client whose
        socket buffer is already full is cut off at once: it has not read what it was sent,
        and aiohttp cannot wait on that buffer again after an earlier wait was cancelled.
        """
        self.stop_keepalive()
        transport = self._request.transport
        if transport is None:
            return
        if transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]:
            transport.abort()
            return
        try:
            await asyncio.wait_for(self._finish(last), timeout_s)
        except asyncio.TimeoutError:
            transport.abort()

    async def _finish(self, last: bytes) -> None:
        self._last_write = self._loop.time()
        await self.response.write_eof(last)

    def stop_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None

    async def _keep_alive(self) -> None:
        while True:
            due = self._last_write + self._keepalive_s
            now = self._loop.time()
            if now < due:
                await asyncio.sleep(due - now)
                continue
            try:
                await self.write(KEEPALIVE)
            except ConnectionError:
                return
