"""Error answers. One function builds them all; the body's shape belongs to the app that
owns the route: pollex's `{"error": msg}` on the root app, OpenAI's shape on the `/v1`
sub-application, which registers its own `ERROR_BODY`. No path prefix is consulted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from aiohttp import web

from pollex.errors import BodyTimeout, PollexError
from pollex.web.keys import LOG_FIELDS

# (status, message, code) -> the JSON body of an error answer.
ErrorBody = Callable[[int, str, str | None], dict[str, Any]]
ERROR_BODY: web.AppKey[ErrorBody] = web.AppKey("error_body")


def pollex_error_body(status: int, message: str, code: str | None) -> dict[str, Any]:
    return {"error": message}


def error_response(
    request: web.BaseRequest,
    status: int,
    message: str,
    *,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A JSON error in the shape of the innermost app that matched the request."""
    apps = request.match_info.apps if isinstance(request, web.Request) else ()
    body = apps[-1].get(ERROR_BODY, pollex_error_body) if apps else pollex_error_body
    return web.json_response(body(status, message, code), status=status, headers=headers)


def failure_response(request: web.Request, exc: PollexError) -> web.Response:
    """The answer to a request that failed before anything was sent, and its log fields."""
    record_failure(request, exc)
    headers = None
    if exc.retry_after_s is not None:
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    response = error_response(request, exc.status, exc.message, code=exc.code, headers=headers)
    if isinstance(exc, BodyTimeout):
        response.force_close()  # the rest of the body may still be on its way
    return response


def record_failure(request: web.Request, exc: PollexError) -> None:
    request[LOG_FIELDS].update(outcome=exc.outcome, error=exc.message)
