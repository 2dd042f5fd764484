"""The requests being answered right now, so that shutdown can wait for them, then end them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from pollex.routing.watchdog import Watchdog


class InFlight:
    def __init__(self) -> None:
        self._watchdogs: set[Watchdog] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return len(self._watchdogs)

    @contextlib.contextmanager
    def track(self, watchdog: Watchdog) -> Iterator[None]:
        self._watchdogs.add(watchdog)
        self._idle.clear()
        try:
            yield
        finally:
            self._watchdogs.discard(watchdog)
            if not self._watchdogs:
                self._idle.set()

    async def drain(self, grace_s: float, settle_s: float = 5.0) -> int:
        """Let requests finish for `grace_s`, then end the rest; returns how many were ended.

        Ended requests answer `server shutting down` (an SSE `error` event, or a 503); they
        get `settle_s` more to write it.
        """
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace_s)
        remaining = list(self._watchdogs)
        for watchdog in remaining:
            watchdog.shutdown()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), settle_s)
        return len(remaining)
