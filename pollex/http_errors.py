"""Error bodies: `{"error": msg}` on pollex's routes, OpenAI's shape under `/v1/`."""

from __future__ import annotations

from aiohttp import web

OPENAI_PREFIX = "/v1/"
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_response(
    request: web.BaseRequest,
    status: int,
    message: str,
    *,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    if request.path.startswith(OPENAI_PREFIX):
        error = {
            "message": message,
            "type": _OPENAI_TYPES.get(status, "server_error"),
            "code": code or status,
        }
        return web.json_response({"error": error}, status=status, headers=headers)
    return web.json_response({"error": message}, status=status, headers=headers)
