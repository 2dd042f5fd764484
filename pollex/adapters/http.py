"""What the HTTP adapters share: one session each, the upstream read loop, error translation.

A concrete adapter keeps only its dialect: the request body, what one decoded item of its
stream means (`read`), and which HTTP statuses are worth another backend.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import aiohttp
import structlog
from yarl import URL

from pollex.adapters import Finish
from pollex.errors import UpstreamError
from pollex.parsing import LineTooLong

log = structlog.get_logger("pollex.upstream")

# Error bodies are small; never read more than this of one to find its message.
ERROR_BODY_LIMIT = 64 * 1024
# How much of an upstream's own error message the debug log keeps.
DETAIL_LIMIT = 200
# What a dialect's reader may raise on a chunk of a shape it did not expect (valid JSON,
# wrong types): all of it is the upstream's fault, a protocol error at this boundary.
_FOREIGN_SHAPE = (AttributeError, KeyError, IndexError, TypeError, ValueError)

Item = TypeVar("Item")


class Decoder(Protocol[Item]):
    """An incremental parser of one stream format (pollex.parsing)."""

    def feed(self, chunk: bytes) -> list[Item]: ...

    def close(self) -> list[Item]: ...


# One decoded item of a stream -> its text, if any; sets `finish` when the end arrives.
Reader = Callable[[Item, Finish], str | None]


class HttpAdapter:
    """An adapter that speaks HTTP: its one session, base URL, identity and limits.

    Subclasses set `provider`, `label` (the name's prefix), `upstream` (the name its
    errors use) and `end_marker` (what a complete stream ends with), and implement
    `_status_error` for non-200 answers. `host` names the server (host:port) in health
    and metrics, so that several hosts of one provider can be told apart.
    """

    provider: str
    label: str
    upstream: str
    end_marker: str

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        model: str,
        *,
        first_token_timeout_s: float,
        max_line_bytes: int,
    ) -> None:
        self._session = session
        self._base = url.rstrip("/")
        parsed = URL(self._base)
        name = str(parsed.host)
        name = f"[{name}]" if ":" in name else name  # an IPv6 address
        port = parsed.explicit_port
        self.host = f"{name}:{port}" if port else name
        self.id = model
        self.name = f"{self.label} ({model})"
        self.first_token_timeout_s = first_token_timeout_s
        self._max_line = max_line_bytes

    async def _status_error(self, resp: aiohttp.ClientResponse) -> UpstreamError:
        raise NotImplementedError

    async def _read_stream(
        self,
        path: str,
        body: dict[str, Any],
        decoder: Decoder[Item],
        read: Reader[Item],
        finish: Finish,
    ) -> AsyncGenerator[str, None]:
        """POST `body` and yield the text of each item as it arrives, until the end marker.

        The one read loop of every HTTP adapter: read what the socket has, feed the
        decoder, hand each item to the dialect's `read`. At EOF the decoder is closed (it
        may still hold a last line); a stream that ends without its end marker is broken.
        """
        async with self._post(path, body) as resp:
            while True:
                chunk = await resp.content.readany()
                try:  # inline, not a context manager: this runs for every chunk
                    items = decoder.feed(chunk) if chunk else decoder.close()
                except ValueError as exc:
                    raise parse_error(exc) from None
                for item in items:
                    try:
                        text = read(item, finish)
                    except _FOREIGN_SHAPE as exc:
                        raise UpstreamError(
                            f"{self.upstream} sent a chunk pollex does not understand",
                            kind="protocol",
                        ) from exc
                    if text:
                        yield text
                    if finish.ended:
                        return
                if not chunk:
                    raise UpstreamError(
                        f"{self.upstream} stream ended before {self.end_marker}", kind="protocol"
                    )

    @asynccontextmanager
    async def _post(self, path: str, body: dict[str, Any]) -> AsyncIterator[aiohttp.ClientResponse]:
        """POST and hand over the 200 response whose body is a stream.

        Leaving the block by any exception (the client left, a timeout, a broken stream)
        closes the connection instead of returning it to the pool, which is what makes
        llama-server and Ollama stop generating.
        """
        async with (
            translated(self.upstream),
            self._session.post(f"{self._base}{path}", json=body) as resp,
        ):
            if resp.status != 200:
                raise await self._status_error(resp)
            try:
                yield resp
            except BaseException:
                resp.close()
                raise


def make_session(
    connect_timeout_s: float, headers: dict[str, str] | None = None
) -> aiohttp.ClientSession:
    """The one session an HTTP adapter owns for the life of the app.

    Only connecting is bounded here: how long an answer may take is decided per request
    (first token, idle, whole stream) by the router, not by a socket timeout.
    """
    timeout = aiohttp.ClientTimeout(
        total=None, connect=connect_timeout_s, sock_connect=connect_timeout_s
    )
    return aiohttp.ClientSession(timeout=timeout, headers=headers)


def parse_error(exc: ValueError) -> UpstreamError:
    """A stream parser's failure as an upstream error of kind `protocol`."""
    if isinstance(exc, LineTooLong):
        return UpstreamError("upstream line too long", kind="protocol", marks_down=False)
    log.debug("malformed_stream", detail=str(exc)[:DETAIL_LIMIT])
    return UpstreamError("malformed upstream stream", kind="protocol")


@asynccontextmanager
async def translated(upstream: str) -> AsyncIterator[None]:
    """aiohttp's exceptions, raised while talking to `upstream`, as `UpstreamError`s.

    The messages name the upstream and the class of failure only: they reach clients and
    `/api/health`, and an address or an OS error text is for the log.
    """
    try:
        yield
    except aiohttp.ClientConnectorError as exc:
        log.debug("upstream_unreachable", upstream=upstream, detail=str(exc)[:DETAIL_LIMIT])
        raise UpstreamError(f"{upstream} unreachable", kind="connect") from exc
    except (aiohttp.ServerTimeoutError, asyncio.TimeoutError) as exc:
        raise UpstreamError(f"{upstream} timed out", kind="timeout") from exc
    except aiohttp.ClientPayloadError as exc:
        raise UpstreamError(f"{upstream} stream was cut", kind="protocol") from exc
    except aiohttp.ClientError as exc:
        log.debug("upstream_connection_failed", upstream=upstream, detail=str(exc)[:DETAIL_LIMIT])
        raise UpstreamError(f"{upstream} connection failed", kind="connect") from exc


async def read_error_body(resp: aiohttp.ClientResponse) -> tuple[Any, str]:
    """The decoded JSON (or None) and raw text of a non-200 answer, read with a bound."""
    raw = await resp.content.read(ERROR_BODY_LIMIT)
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text), text
    except ValueError:
        return None, text


def status_error(
    upstream: str,
    status: int,
    detail: str,
    *,
    failover: bool,
    marks_down: bool,
    what: str = "",
) -> UpstreamError:
    """A non-200 answer. The upstream's own message (`detail`) may quote the request, so it
    goes to the debug log, truncated; the error says who answered what (`what`: a class of
    failure pollex recognised, e.g. "context exceeded")."""
    log.debug("upstream_status", upstream=upstream, status=status, detail=detail[:DETAIL_LIMIT])
    suffix = f" ({what})" if what else ""
    return UpstreamError(
        f"{upstream} answered HTTP {status}{suffix}",
        kind="status",
        failover=failover,
        marks_down=marks_down,
    )


def reported_error(upstream: str, detail: object) -> UpstreamError:
    """An error the upstream reported inside a 200 stream; its text goes to the debug log."""
    log.debug("upstream_reported_error", upstream=upstream, detail=str(detail)[:DETAIL_LIMIT])
    return UpstreamError(f"{upstream} reported an error", kind="status", marks_down=False)


def snippet(text: str, limit: int = DETAIL_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


Extractor = Callable[[Any], str | None]


def upstream_message(body: Any, raw: str, extract: Extractor) -> str:
    """The upstream's own error message, else a short excerpt of what it sent."""
    message = extract(body) if body is not None else None
    return message or snippet(raw) or "empty error body"
