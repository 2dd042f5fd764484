"""What escapes a bare app on pollex's connections: a JSON error, one structured log line.

pollex's own middleware answers every exception itself; this is the net below it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import web
from helpers import fast_config
from structlog.testing import capture_logs

from pollex.metrics import Metrics
from pollex.web.connections import PollexRunner
from pollex.web.keys import CONFIG, METRICS


@dataclass
class Reply:
    head: str
    body: bytes
    closed: bool

    @property
    def status(self) -> int:
        return int(self.head.split(" ", 2)[1])

    def header(self, name: str) -> str:
        for line in self.head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.lower() == name.lower():
                return value.strip()
        raise KeyError(name)


@dataclass
class Pollex:
    host: str
    port: int

    async def send(self, data: bytes) -> Reply:
        """Send `data`, read until the server closes the connection."""
        reader, writer = await asyncio.open_connection(self.host, self.port)
        writer.write(data)
        received = await asyncio.wait_for(reader.read(), 2)
        writer.close()
        head, _, body = received.partition(b"\r\n\r\n")
        return Reply(head.decode("latin-1"), body, reader.at_eof())


@contextlib.asynccontextmanager
async def serving_app(app: web.Application) -> AsyncIterator[Pollex]:
    """A bare app (no pollex middleware) on pollex's connections."""
    app[CONFIG] = fast_config()
    app[METRICS] = Metrics()
    runner = PollexRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield Pollex("127.0.0.1", site.port)
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

    assert reply.status == status
    assert json.loads(reply.body) == {"error": error}
    assert [e["event"] for e in logs] == ["unhandled_error"]
    assert logs[0]["request_id"] == reply.header("X-Request-ID")
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

    assert reply.closed
    assert [(e["event"], e["message"]) for e in logs] == [("server_error", "Unhandled exception")]
    assert "Unhandled exception" not in capsys.readouterr().err + caplog.text
