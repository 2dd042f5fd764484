"""Per-request plumbing: request id, one access-log line, request metrics, CORS, the guard,
the body, and the boundary where exceptions become JSON error answers."""

from __future__ import annotations

import asyncio
import re
import secrets
import time

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from pollex.config import Config
from pollex.errors import Forbidden, PollexError, RateLimited, Unauthorized
from pollex.web import body, cors
from pollex.web.errors import error_response, failure_response
from pollex.web.guard import host_is_allowed, is_exempt, is_listing, key_is_valid, presented_key
from pollex.web.keys import CONFIG, LIMITER, LOG_FIELDS, METRICS, REQUEST_ID
from pollex.web.proxies import client_ip

log = structlog.get_logger("pollex.access")

_VALID_ID = re.compile(r"[0-9a-f]{32}")
CLIENT_CLOSED = 499  # nginx's convention for "the client went away first"
# The metrics label of a request whose route is not its match (preflights).
ROUTE = web.RequestKey("route", str)


def request_id_of(request: web.Request) -> str:
    incoming = request.headers.get("X-Request-ID", "")
    return incoming if _VALID_ID.fullmatch(incoming) else secrets.token_hex(16)


def route_of(request: web.Request) -> str:
    if ROUTE in request:
        return request[ROUTE]
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    request_id = request_id_of(request)
    request[REQUEST_ID] = request_id
    request[LOG_FIELDS] = {}
    structlog.contextvars.bind_contextvars(request_id=request_id)
    status = 500
    try:
        response = await _answer(request, handler)
        status = response.status
        return response
    except asyncio.CancelledError:
        status = CLIENT_CLOSED
        request[LOG_FIELDS].setdefault("outcome", "client_gone")
        raise
    finally:
        route = route_of(request)
        request.config_dict[METRICS].requests.labels(request.method, route, str(status)).inc()
        log.info(
            "request",
            method=request.method,
            route=route,
            status=status,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
            **request[LOG_FIELDS],
        )
        structlog.contextvars.unbind_contextvars("request_id")


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        if request.method == "OPTIONS":
            request[ROUTE] = await cors.preflight_route(request)
            return cors.preflight(request, request.config_dict[CONFIG].cors_origin)
        return await handler(request)
    except PollexError as exc:
        return failure_response(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
        return error_response(request, exc.status, _http_message(exc), headers=headers)
    except Exception:  # the boundary: a bug must answer JSON 500, not a traceback page
        log.exception("unhandled_error")
        if request.writer.output_size > 0:
            # Headers are out: a second response would land inside the body. aiohttp
            # closes the connection instead (the streams end themselves in-band first).
            raise
        return error_response(request, 500, "internal error")


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Host, API key, rate limit (pollex.web.guard), then the body (pollex.web.body)."""
    if is_exempt(request):
        return await handler(request)
    config = request.config_dict[CONFIG]
    if not config.api_key and not host_is_allowed(
        request.headers.get("Host"), config.allowed_hosts
    ):
        raise Forbidden("this Host is not allowed without an API key (see allowed_hosts)")
    json_body = body.has_json_body(request)
    if json_body:
        body.require_json(request)
    _admit(request, config)
    if json_body:
        await body.read_in_time(request, config.body_timeout_s)
    return await handler(request)


def _admit(request: web.Request, config: Config) -> None:
    """API key, then rate limit: raises when the request may not go on."""
    refusal: str | None = None
    if config.api_key:
        key = presented_key(request)
        if key is not None and key_is_valid(key, config.api_key):
            return
        refusal = "missing API key" if key is None else "invalid API key"
    elif is_listing(request):
        return
    ip = client_ip(request, config.trust_proxy_headers, config.trusted_proxies)
    wait = request.config_dict[LIMITER].hit(ip)
    if wait is not None:
        raise RateLimited(wait)
    if refusal is not None:
        raise Unauthorized(refusal)


def _http_message(exc: web.HTTPException) -> str:
    if exc.status == 404:
        return "not found"
    if exc.status == 405:
        return "method not allowed"
    if exc.status == 413:
        return "request body too large"
    return exc.reason.lower()


async def add_common_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: runs for streamed responses too, before their headers go out."""
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers["X-Request-ID"] = request_id
    cors.add_headers(request, response, request.config_dict[CONFIG].cors_origin)
