"""CORS: which foreign web origins may read pollex's answers. Off by default.

With `cors_origin` empty no CORS header is sent at all, so a page on another origin
cannot read an answer (the browser withholds it). `cors_origin` lists the origins that
may (a browser extension, a page elsewhere); `*` allows any. A listed `Origin` is echoed
in `Access-Control-Allow-Origin`, with `Vary: Origin` so caches keep answers apart.

Preflights (`OPTIONS`) answer 204 without auth or rate limit. For a listed origin they
allow pollex's methods and the request headers the browser asks for: SDKs send their
own (the OpenAI JS SDK sends `x-stainless-*`), and a fixed list would fail them. They
are counted in metrics under the route they are for, not as `unmatched`.
"""

from __future__ import annotations

import re

from aiohttp import web

ALLOWED_METHODS = "GET, POST, OPTIONS"
DEFAULT_ALLOWED_HEADERS = "Content-Type, X-API-Key, Authorization"
EXPOSED_HEADERS = "X-Request-ID, Retry-After"
# How long a browser may reuse a preflight's answer: Chrome's cap (Firefox allows a day).
MAX_AGE_S = 7200
# `Access-Control-Request-Headers`: a comma-separated list of header names (RFC 9110
# tokens), bounded, so what is echoed is a list of names and nothing else.
_HEADER_NAMES = re.compile(
    r"[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:[ \t]*,[ \t]*[!#$%&'*+.^_`|~0-9A-Za-z-]+)*"
)
_MAX_ASKED_HEADERS = 2048


def allowed_origin(request: web.BaseRequest, origins: tuple[str, ...]) -> str | None:
    """The `Access-Control-Allow-Origin` value for this request, or None for none."""
    if not origins:
        return None
    if "*" in origins:
        return "*"
    origin = request.headers.get("Origin")
    if origin is not None and origin.lower() in origins:
        return origin
    return None


def add_headers(
    request: web.BaseRequest, response: web.StreamResponse, origins: tuple[str, ...]
) -> None:
    """The CORS headers of every answer (called before its headers go out)."""
    if not origins:
        return
    if "*" not in origins:
        vary = response.headers.get("Vary")
        response.headers["Vary"] = f"{vary}, Origin" if vary else "Origin"
    allowed = allowed_origin(request, origins)
    if allowed is not None:
        response.headers["Access-Control-Allow-Origin"] = allowed
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS


def preflight(request: web.BaseRequest, origins: tuple[str, ...]) -> web.Response:
    """The answer to `OPTIONS`: 204, and what a listed origin may do."""
    response = web.Response(status=204)
    if allowed_origin(request, origins) is None:
        return response
    response.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
    asked = request.headers.get("Access-Control-Request-Headers", "").strip()
    if asked and len(asked) <= _MAX_ASKED_HEADERS and _HEADER_NAMES.fullmatch(asked):
        response.headers["Access-Control-Allow-Headers"] = asked
    else:
        response.headers["Access-Control-Allow-Headers"] = DEFAULT_ALLOWED_HEADERS
    response.headers["Access-Control-Max-Age"] = str(MAX_AGE_S)
    return response


async def preflight_route(request: web.Request) -> str:
    """The route template an `OPTIONS` request is for, as metrics label it.

    aiohttp resolves `OPTIONS /api/models` to a 405 that names no route, so the path is
    resolved again as the methods pollex's routes have: the one the preflight announces,
    then GET and POST.
    """
    apps = request.match_info.apps
    root = apps[0] if apps else request.app
    announced = request.headers.get("Access-Control-Request-Method", "").upper()
    for method in dict.fromkeys((announced, "GET", "POST")):
        if method not in ("GET", "POST"):
            continue
        match = await root.router.resolve(request.clone(method=method))
        resource = match.route.resource
        if match.http_exception is None and resource is not None:
            return resource.canonical
    return "unmatched"
