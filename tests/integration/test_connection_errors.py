"""What escapes a bare app on pollex's connections: a JSON error, one structured log line.

pollex's own middleware answers every exception itself; this is the net below it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from helpers import RawClient, fast_config
from structlog.testing import capture_logs

from pollex.metrics import Metrics
from pollex.web.connections import PollexRunner
from pollex.web.keys import CONFIG, METRICS


@contextlib.asynccontextmanager
async def serving_app(app: web.Application) -> AsyncIterator[RawClient]:
    """A bare app (no pollex middleware) on pollex's connections."""
    app[CONFIG] = fast_config()
    app[METRICS] = Metrics()
    runner = PollexRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield RawClient("127.0.0.1", site.port)
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("exc", "status", "error"),
    [
        (RuntimeError("bug"), 500, "internal server error"),
        (asyncio.TimeoutError(), 504, "gateway timeout"),
    ],
)
async def test_an_exception_past_the_app_is_a_json_error_and_one_log_line(
    exc: BaseException, status: int, error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def handler(request: web.Request) -> web.Response:
        raise exc

    app = web.Application()
    app.router.add_get("/", handler)
    async with serving_app(app) as pollex:
        with capture_logs() as logs:
            reply = await pollex.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")

    assert (reply.ended, reply.status) == ("eof", status)
    assert reply.json() == {"error": error}
    assert [e["event"] for e in logs] == ["unhandled_error"]
    assert logs[0]["request_id"] == reply.headers["x-request-id"]
    assert "Error handling request" not in capsys.readouterr().err


async def test_aiohttp_own_error_reports_are_structured(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def broken_signal(request: web.Request, response: web.StreamResponse) -> None:
        raise RuntimeError("a bug while preparing the response")

    app = web.Application()
    app.router.add_get("/", handler)
    app.on_response_prepare.append(broken_signal)
    async with serving_app(app) as pollex:
        with capture_logs() as logs:
            reply = await pollex.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")

    assert reply.ended == "eof"
    assert [(e["event"], e["message"]) for e in logs] == [("server_error", "Unhandled exception")]
    assert "Unhandled exception" not in capsys.readouterr().err + caplog.text
