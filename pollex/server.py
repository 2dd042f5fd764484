"""Running the app: listen, tell systemd, stop cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
from typing import Any

import structlog
from aiohttp import web

from pollex import __version__
from pollex.config import Config
from pollex.notify import notify, watchdog_interval
from pollex.web.app import create_app
from pollex.web.connections import PollexRunner
from pollex.web.keys import IN_FLIGHT

log = structlog.get_logger("pollex.server")

# After the grace time, how long ended requests get to write their last event.
SETTLE_S = 2.0


async def serve(config: Config, stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set or a SIGINT/SIGTERM arrives."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app = create_app(config)
    # Header and keep-alive deadlines, handler cancellation, JSON answers to malformed
    # requests: pollex.web.connections.
    runner = PollexRunner(app, shutdown_timeout=SETTLE_S)
    await runner.setup()
    accept_failures = AcceptFailureLog(loop)
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        log.info("listening", host=config.host, port=config.port, version=__version__)
        notify("READY=1")
        pinger = _start_watchdog_pings()
        await stop.wait()
        log.info("stopping", in_flight=len(app[IN_FLIGHT]))
        notify("STOPPING=1")
        await site.stop()
        ended = await app[IN_FLIGHT].drain(config.shutdown_grace_s, SETTLE_S)
        if ended:
            log.warning("ended_at_shutdown", requests=ended)
        if pinger is not None:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        accept_failures.uninstall()
    log.info("stopped")


class AcceptFailureLog:
    """Accept failures (out of file descriptors), logged at most once per `window_s`.

    When the process runs out of descriptors, asyncio reports every failed `accept()`
    through the loop's exception handler, with a traceback, up to a backlog's worth per
    event loop turn: tens of MB of log a minute, while the box is already in trouble.
    This handler turns them into one line per window with a count, and passes every
    other report on to the handler that was there before.
    """

    MESSAGE = "socket.accept() out of system resource"  # asyncio's words for it
    ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

    def __init__(self, loop: asyncio.AbstractEventLoop, window_s: float = 1.0) -> None:
        self._loop = loop
        self._window_s = window_s
        self._previous = loop.get_exception_handler()
        self._count = 0
        self._error = ""
        self._window: asyncio.TimerHandle | None = None
        loop.set_exception_handler(self)

    def uninstall(self) -> None:
        if self._window is not None:
            self._window.cancel()
            self._window = None
        self._flush()
        self._loop.set_exception_handler(self._previous)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if context.get("message") != self.MESSAGE or not (
            isinstance(exc, OSError) and exc.errno in self.ERRNOS
        ):
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self._count += 1
        self._error = exc.strerror or str(exc)
        if self._window is None:  # the first in a while: say so at once
            self._end_window()

    def _end_window(self) -> None:
        """Log what the window collected, and open another one if there was any."""
        self._window = None
        if self._flush():
            self._window = self._loop.call_later(self._window_s, self._end_window)

    def _flush(self) -> bool:
        if not self._count:
            return False
        log.error("accept_failed", error=self._error, count=self._count, window_s=self._window_s)
        self._count = 0
        return True


def _start_watchdog_pings() -> asyncio.Task[None] | None:
    interval = watchdog_interval()
    if interval is None:
        return None

    async def ping() -> None:
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    return asyncio.create_task(ping(), name="pollex-watchdog")
