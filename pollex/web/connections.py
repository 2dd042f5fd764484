"""What happens on a connection outside the app: deadlines for a request's headers and
for idle keep-alive connections, and the answer to a request too malformed to reach it.

aiohttp gives a connection all the time in the world to send its request line and
headers (its keep-alive timer, 3630 s by default, is the only bound), so a client that
sends a header byte per second holds a socket and a file descriptor indefinitely. Its
parser has no hook for "headers complete" either. `PollexRunner` is an `AppRunner`
whose connections are `_Connection`s, aiohttp's `RequestHandler` with a header timer:

- armed when the connection is accepted, and again by the first bytes that arrive once
  every request on the connection has been answered (the previous body complete);
- cancelled as soon as a request's headers are parsed (aiohttp counts parsed requests);
- on expiry, if part of a request arrived: a `408` JSON answer, then the connection is
  closed; if nothing arrived: the connection is closed (there is no request to answer).

An idle keep-alive connection is closed after `keepalive_timeout_s` by aiohttp's own
timer. The body has its deadline in pollex.web.body, where a response can still be written.
A request's bytes that arrive while an earlier pipelined request is still being answered
are bounded by the keep-alive timer only (no browser pipelines).

Malformed requests (a NUL byte in a header, a space before the colon, a line too long)
never reach the app: aiohttp answers them itself with a plain-text 400 that quotes the
offending line, and logs a traceback with it, API key included. `_Connection.handle_error`
answers them in pollex's JSON shape with an `X-Request-ID`, says what was wrong without
quoting it, and logs one structured line without header values.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    ContentEncodingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from pollex.errors import Outcome
from pollex.metrics import Metrics
from pollex.web.body import UNDECODABLE
from pollex.web.keys import CONFIG, METRICS

log = structlog.get_logger("pollex.access")

HEADERS_LATE = "request headers not received in time"
# The first line of a parser message is a fixed description ("Invalid header value
# char"); the input it quotes comes after a colon or on the next lines. A description is
# passed on only if it looks like one.
_DESCRIPTION = re.compile(r"[A-Za-z][A-Za-z ']{2,79}")


class PollexRunner(web.AppRunner):
    """`AppRunner` with pollex's connections; limits come from the app's config."""

    def __init__(self, app: web.Application, *, shutdown_timeout: float) -> None:
        super().__init__(app, shutdown_timeout=shutdown_timeout)

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # the app's startup, then aiohttp's server
        config = self.app[CONFIG]
        return _Server(
            plain.request_handler,
            request_factory=plain.request_factory,
            loop=asyncio.get_running_loop(),
            header_timeout_s=config.header_timeout_s,
            keepalive_timeout_s=config.keepalive_timeout_s,
            metrics=self.app[METRICS],
        )


class _Server(web.Server):
    """aiohttp's server, making `_Connection`s (a server is its connection factory)."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        *,
        request_factory: Callable[..., web.BaseRequest],
        loop: asyncio.AbstractEventLoop,
        header_timeout_s: float,
        keepalive_timeout_s: float,
        metrics: Metrics,
    ) -> None:
        # handler_cancellation: a client that goes away cancels its handler, and with it
        # the upstream request, so the GPU stops working for nobody.
        super().__init__(
            handler, request_factory=request_factory, handler_cancellation=True, loop=loop
        )
        self.header_timeout_s = header_timeout_s
        self.metrics = metrics
        self._connection_loop = loop
        self._keepalive_timeout_s = keepalive_timeout_s

    def __call__(self) -> RequestHandler:
        return _Connection(
            self,
            loop=self._connection_loop,
            keepalive_timeout=self._keepalive_timeout_s,
            access_log=None,  # pollex writes its own access log (pollex.web.middleware)
        )

    def record(self, method: str, status: int, error: str, outcome: Outcome) -> str:
        """Log and count a request answered here, like the app's access log does."""
        request_id = secrets.token_hex(16)
        self.metrics.requests.labels(method, "unmatched", str(status)).inc()
        log.info(
            "request",
            request_id=request_id,
            method=method,
            route="unmatched",
            status=status,
            outcome=outcome,
            error=error,
        )
        return request_id


class _Connection(RequestHandler):
    __slots__ = ("_answered", "_header_timer", "_last_body", "_partial", "_server")

    def __init__(self, manager: _Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._server = manager
        self._header_timer: asyncio.TimerHandle | None = None
        self._answered = 0  # requests answered; aiohttp's `_request_count` counts parsed ones
        self._last_body: StreamReader | None = None
        self._partial = False  # bytes of a request whose headers are not complete

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:
            self._disarm()
        elif data and self._between_requests():
            self._partial = True
            if self._header_timer is None:
                self._arm()

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._answered += 1
            self._last_body = request.content

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to what the app could not answer: a malformed request (400),
        or an exception that escaped the app's own error boundary (500, 504)."""
        if request.writer.output_size > 0:  # as aiohttp: too late for another response
            raise ConnectionError("a response was already started on this connection")
        if status >= 500:  # the app's access log has this request already
            request_id = secrets.token_hex(16)
            log.error("unhandled_error", request_id=request_id, status=status, exc_info=exc or True)
            error = HTTPStatus(status).phrase.lower()
        else:
            error = describe(exc)
            request_id = self._server.record(request.method, status, error, "bad_request")
        response = web.json_response(
            {"error": error}, status=status, headers={"X-Request-ID": request_id}
        )
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's own error log, as one structured line.

        A body that fails to decode after pollex answered (aiohttp reads what is left of
        it before reusing the connection) is the client's problem, already answered.
        """
        exc = kw.get("exc_info")
        if isinstance(exc, web.RequestPayloadError):
            log.debug("request_body_error", error=type(exc.__cause__ or exc).__name__)
            return
        text = str(args[0]) % args[1:] if len(args) > 1 else str(args[0] if args else "error")
        log.error("server_error", message=text, exc_info=exc or True)

    def _between_requests(self) -> bool:
        """Every request parsed so far is answered, its body complete: new bytes are the
        next request's."""
        body_done = self._last_body is None or self._last_body.is_eof()
        return self._answered == self._request_count and body_done

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._header_timer = loop.call_later(self._server.header_timeout_s, self._headers_late)

    def _disarm(self) -> None:
        self._partial = False
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        transport = self.transport
        if transport is None or not self._between_requests():
            return
        if self._partial:
            request_id = self._server.record("UNKNOWN", 408, HEADERS_LATE, "client_timeout")
            transport.write(_raw_json_response(408, {"error": HEADERS_LATE}, request_id))
        self.force_close()


def describe(exc: BaseException | None) -> str:
    """What was wrong with a request aiohttp could not parse, without quoting any of it."""
    if isinstance(exc, ContentEncodingError):  # found while parsing, or by the app (body.py)
        return UNDECODABLE
    what = None
    if isinstance(exc, LineTooLong):
        what = "a line is too long"
    elif isinstance(exc, BadHttpMethod):
        https = exc.message.startswith("Received HTTPS traffic")
        what = "HTTPS sent to an HTTP port" if https else "invalid method"
    elif isinstance(exc, BadStatusLine):
        what = "invalid request line"
    elif isinstance(exc, InvalidURLError):
        what = "invalid URL"
    elif isinstance(exc, InvalidHeader):
        what = "invalid header"
    elif isinstance(exc, PayloadEncodingError):
        what = "invalid body framing"
    elif isinstance(exc, BadHttpMessage):
        first = exc.message.split("\n", 1)[0].split(":", 1)[0].strip().rstrip(".")
        if _DESCRIPTION.fullmatch(first):
            what = first[0].lower() + first[1:]
    return f"malformed request: {what}" if what else "malformed request"


def _raw_json_response(status: int, body: dict[str, str], request_id: str) -> bytes:
    """A whole HTTP/1.1 response, for a connection that has no request object to answer."""
    content = json.dumps(body).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(content)}\r\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime())}\r\n"
        "Connection: close\r\n"
        f"X-Request-ID: {request_id}\r\n\r\n"
    )
    return head.encode("ascii") + content
