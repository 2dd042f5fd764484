"""Server-Sent Events to pollex's clients: the framing, the keep-alive, the deferred headers.

Written by hand rather than with aiohttp-sse: its ping is periodic whatever was written
and is spelled `: ping`, which Continue's parser mistakes for the end of a message
(docs/upstreams.md); pollex sends `: keep-alive` only after `keepalive_s` of silence, and
can hold its headers back until there is something to say.
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
    """An SSE response that never stays silent long.

    With `defer`, the headers wait for the first write or for `keepalive_s`, whichever
    comes first: a failure found before then (every backend known down, a pinned backend
    refusing) is still an ordinary HTTP error with a status and `Retry-After`, which SDKs
    turn into typed exceptions and retry. Without it, `open()` sends them at once.
    """

    def __init__(self, request: web.Request, keepalive_s: float, *, defer: bool) -> None:
        self._request = request
        self._keepalive_s = keepalive_s
        self.response = web.StreamResponse(status=200, headers=HEADERS)
        self._loop = asyncio.get_running_loop()
        self._last_write = self._loop.time()
        self._keepalive: asyncio.Task[None] | None = None
        # Set once the headers are on their way: by the keep-alive timer (a task), or by
        # the first write, which sends them itself (no extra task, no extra loop turn).
        self._opening: asyncio.Future[None] | None = None
        self._timer = self._loop.call_later(keepalive_s, self._open_soon) if defer else None

    @property
    def opened(self) -> bool:
        """Whether the headers are out (or on their way): from now on, errors are in-band."""
        return self._opening is not None or self._keepalive is not None

    async def open(self) -> None:
        await self.response.prepare(self._request)
        self._keepalive = asyncio.create_task(self._keep_alive())

    def _open_soon(self) -> None:
        if self._opening is None:
            self._opening = asyncio.create_task(self.open())

    async def _ensure_open(self) -> None:
        if self._opening is None:
            if self._timer is not None:
                self._timer.cancel()
            self._opening = self._loop.create_future()
            self._opening.set_result(None)
            await self.open()
        else:
            # Shielded: a watchdog cancelling the handler must not leave half-sent headers.
            await asyncio.shield(self._opening)

    async def write(self, raw: bytes) -> None:
        if self._keepalive is None:
            await self._ensure_open()
        self._last_write = self._loop.time()
        await self.response.write(raw)

    async def finish(self, last: bytes, timeout_s: float) -> None:
        """Send the last event and end the body; cut off a client that cannot take it.

        Bounded because a client that stopped reading (but keeps its socket open) would
        otherwise hold this handler, and everything it references, for ever. A client whose
        socket buffer is already full is cut off at once: it has not read what it was sent,
        and aiohttp cannot wait on that buffer again after an earlier wait was cancelled.
        """
        if self._keepalive is None:
            await self._ensure_open()
        self.close()
        transport = self._request.transport
        if transport is None:
            return
        if transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]:
            transport.abort()
            return
        try:
            await asyncio.wait_for(self.response.write_eof(last), timeout_s)
        except asyncio.TimeoutError:
            transport.abort()

    def abort(self) -> None:
        """Drop the connection: for a client that stopped reading."""
        self.close()
        transport = self._request.transport
        if transport is not None:
            transport.abort()

    def close(self) -> None:
        """No more keep-alives, and no deferred opening any more."""
        if self._timer is not None:
            self._timer.cancel()
        if self._keepalive is not None:
            self._keepalive.cancel()

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
