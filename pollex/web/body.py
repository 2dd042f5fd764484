"""The request body of a POST: JSON only, whole within `body_timeout_s`, decodable.

- `Content-Type` must be `application/json` or a `+json` type, else 415. The types a page
  can POST cross-site without a CORS preflight (`text/plain`, form encodings) are none
  of these, so a foreign page cannot make a visitor's browser run a polish.
- The body is read here, before the route sees it, under one deadline for all of it: a
  client that sends it a byte at a time, or announces more than it sends, gets 408 and
  the connection is closed. aiohttp keeps what was read (`request.read()` answers from
  memory afterwards), so the routes' own reading costs nothing.
- A declared `Content-Length` over `max_body_bytes` is 413 at once, without waiting for
  a body that would be refused anyway.
- A `Content-Encoding` (gzip, deflate) that does not decode, or broken chunked framing,
  is the client's fault: 400, not a traceback and a 500.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError

from pollex.errors import BadRequest, BodyTimeout, UnsupportedMediaType

UNDECODABLE = "request body: cannot decode its Content-Encoding"


def has_json_body(request: web.Request) -> bool:
    """Whether this is a POST to a route pollex has (404 and 405 need no body)."""
    return request.method == "POST" and request.match_info.http_exception is None


def require_json(request: web.Request) -> None:
    if not is_json(request.content_type):
        raise UnsupportedMediaType("Content-Type must be application/json")


def is_json(content_type: str) -> bool:
    """`application/json` or a structured `+json` type; parameters (charset) are ignored."""
    return content_type == "application/json" or content_type.endswith("+json")


async def read_in_time(request: web.Request, timeout_s: float) -> None:
    """Read the whole body into the request, or fail with the client's error."""
    declared = request.content_length
    if declared is not None and declared > request.client_max_size:
        raise web.HTTPRequestEntityTooLarge(max_size=request.client_max_size, actual_size=declared)
    try:
        await asyncio.wait_for(request.read(), timeout_s)
    except asyncio.TimeoutError:
        raise BodyTimeout("request body not received in time") from None
    except web.RequestPayloadError as exc:
        if isinstance(exc.__cause__, ContentEncodingError):
            raise BadRequest(UNDECODABLE) from None
        raise BadRequest("request body: malformed") from None
