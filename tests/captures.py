"""Reading the real llama-server traffic captured in tests/fixtures/llama-server/.

The files are exact bytes (see that folder's README): the request, a separator line, and
the response with its CRLF headers; `*.wire.http` keeps the chunked transfer-coding.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures" / "llama-server"
# Headers that aiohttp's server writes itself; replaying them would duplicate or lie.
_HOP_HEADERS = {"transfer-encoding", "content-length", "connection", "keep-alive"}


@dataclass(frozen=True)
class Capture:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    request_body: bytes

    def replay_headers(self) -> dict[str, str]:
        return {k: v for k, v in self.headers if k.lower() not in _HOP_HEADERS}

    def events(self) -> list[bytes]:
        """An SSE body cut after each blank line, each piece ending with its `\\n\\n`."""
        pieces = self.body.split(b"\n\n")
        return [piece + b"\n\n" for piece in pieces[:-1]]


@cache
def load(name: str) -> Capture:
    raw = (FIXTURES / name).read_bytes()
    request, response = raw.split(b"\n=== response", 1)
    response = response.split(b"\n", 1)[1]
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = tuple(
        (name.strip(), value.strip())
        for name, _, value in (line.partition(":") for line in header_lines)
    )
    request_body = request.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in request else b""
    return Capture(int(status_line.split()[1]), headers, body, request_body)


@cache
def wire_chunks(name: str) -> tuple[bytes, ...]:
    """The HTTP chunks exactly as llama-server framed them on the wire."""
    body = load(name).body
    chunks = []
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        chunks.append(rest[:size])
        body = rest[size + 2 :]
    return tuple(chunks)
