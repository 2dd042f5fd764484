"""Running the app: listen, tell systemd, stop cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import structlog
from aiohttp import web

from pollex import __version__
from pollex.config import Config
from pollex.notify import notify, watchdog_interval
from pollex.web.app import create_app
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
    # handler_cancellation: a client that goes away cancels its handler, and with it
    # the upstream request, so the GPU stops working for nobody.
    app = create_app(config)
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=SETTLE_S,
    )
    await runner.setup()
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
