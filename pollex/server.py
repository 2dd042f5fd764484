"""Running the app: listen, tell systemd, stop cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import structlog
from aiohttp import web

from pollex import __version__
from pollex.app import create_app
from pollex.config import Config
from pollex.notify import notify, watchdog_interval

log = structlog.get_logger("pollex.server")


async def serve(config: Config, stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set or a SIGINT/SIGTERM arrives."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # handler_cancellation: a client that goes away cancels its handler, and with it
    # the upstream request, so the GPU stops working for nobody.
    runner = web.AppRunner(
        create_app(config),
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=config.shutdown_grace_s,
    )
    await runner.setup()
    try:
        site = web.TCPSite(
            runner, config.host, config.port, shutdown_timeout=config.shutdown_grace_s
        )
        await site.start()
        log.info("listening", host=config.host, port=config.port, version=__version__)
        notify("READY=1")
        pinger = _start_watchdog_pings()
        await stop.wait()
        log.info("stopping")
        notify("STOPPING=1")
        if pinger is not None:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
    log.info("stopped")


def _start_watchdog_pings() -> asyncio.Task[None] | None:
    interval = watchdog_interval()
    if interval is None:
        return None

    async def ping() -> None:
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    return asyncio.create_task(ping(), name="pollex-watchdog")
