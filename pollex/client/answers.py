"""What a pollex answer means to a client: the exit statuses the clients share, the
failure that carries one, and how to read an error answer (and tell pollex's own from a
proxy's or another server's)."""

from __future__ import annotations

import json
from collections.abc import Mapping

EXIT_OK = 0
EXIT_FAILURE = 1  # anything not below: rate limited (429), not a pollex, invalid event
EXIT_USAGE = 2  # bad command line (argparse's status), invalid --url
EXIT_UNREACHABLE = 3  # no connection to pollex, or it broke before the answer was complete
EXIT_AUTH = 4  # 401/403: missing or wrong API key
EXIT_BAD_INPUT = 5  # unreadable input, or pollex said 400/413 (or an unknown model)
EXIT_UPSTREAM = 6  # pollex answered but no model could: an `error` event or a 5xx


class Failure(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def error_message(body: bytes) -> str:
    """pollex's `{"error": "..."}`; also OpenAI's shape, or the start of any other body."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace").strip()
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    return error if isinstance(error, str) else ""


def from_pollex(headers: Mapping[str, str], body: bytes) -> bool:
    """pollex's own error answers are JSON `{"error": ...}` and carry an `X-Request-ID`;
    a proxy's or another server's (an HTML 502 page, a 501) do not."""
    if "X-Request-ID" not in headers:
        return False
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and "error" in data


def not_pollex(url: str, status: int) -> Failure:
    """Something else answered: a 5xx (a proxy whose pollex is gone, a server that is not
    pollex) means pollex was not reached; anything else, that the URL is wrong."""
    exit_code = EXIT_UNREACHABLE if status >= 500 else EXIT_FAILURE
    return Failure(f"not a pollex server at {url} (HTTP {status})", exit_code)
