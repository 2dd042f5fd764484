"""pollex.web.connections.describe: what was wrong with a request, quoting none of it."""

from __future__ import annotations

import pytest
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    ContentEncodingError,
    ContentLengthError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    TransferEncodingError,
)

from pollex.web.connections import describe

SECRET = "sk-secret-value"


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (LineTooLong(SECRET.encode(), 8190), "malformed request: a line is too long"),
        (BadHttpMethod(SECRET), "malformed request: invalid method"),
        (BadHttpMethod("\x16\x03\x01"), "malformed request: HTTPS sent to an HTTP port"),
        (BadStatusLine(SECRET), "malformed request: invalid request line"),
        (InvalidURLError(SECRET), "malformed request: invalid URL"),
        (InvalidHeader(SECRET.encode()), "malformed request: invalid header"),
        (TransferEncodingError(SECRET), "malformed request: invalid body framing"),
        (ContentLengthError(SECRET), "malformed request: invalid body framing"),
        (ContentEncodingError(SECRET), "request body: cannot decode its Content-Encoding"),
        (
            BadHttpMessage(f"Invalid header value char:\n\n  b'X-API-Key: {SECRET}\\x00'\n  ^"),
            "malformed request: invalid header value char",
        ),
        (
            BadHttpMessage("Duplicate 'Host' header found."),
            "malformed request: duplicate 'Host' header found",
        ),
        (BadHttpMessage(f"Bad thing {SECRET}"), "malformed request"),  # not a plain description
        (BadHttpMessage(""), "malformed request"),
        (None, "malformed request"),
        (ValueError(SECRET), "malformed request"),
    ],
)
def test_describe(exc: BaseException | None, message: str) -> None:
    assert describe(exc) == message
    assert SECRET not in describe(exc)
