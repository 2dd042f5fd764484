"""What the HTTP adapters share: one session each, error translation, bounded reads."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import aiohttp

from pollex.errors import UpstreamError
from pollex.parsing import LineTooLong, MalformedLine

# Error bodies are small; never read more than this of one to find its message.
ERROR_BODY_LIMIT = 64 * 1024


class HttpAdapter:
    """What every HTTP adapter keeps: its one session, base URL, identity and limits.

    Subclasses set `provider`, `label` (the name's prefix) and their defaults.
    """

    provider: str
    label: str
    default_model = ""
    default_first_token_timeout_s = 60.0

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        model: str = "",
        *,
        first_token_timeout_s: float | None = None,
        max_line_bytes: int = 1 << 20,
    ) -> None:
        self._session = session
        self._base = url.rstrip("/")
        self.id = model or self.default_model
        self.name = f"{self.label} ({self.id})"
        self.first_token_timeout_s = first_token_timeout_s or self.default_first_token_timeout_s
        self._max_line = max_line_bytes


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


@contextmanager
def parse_errors() -> Iterator[None]:
    """Stream-parser failures as upstream errors of kind `protocol`."""
    try:
        yield
    except LineTooLong:
        raise UpstreamError("upstream line too long", kind="protocol", marks_down=False) from None
    except MalformedLine as exc:
        raise UpstreamError(f"malformed upstream stream: {exc}", kind="protocol") from None


@asynccontextmanager
async def translated(upstream: str) -> AsyncIterator[None]:
    """aiohttp's exceptions, raised while talking to `upstream`, as `UpstreamError`s."""
    try:
        yield
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamError(f"{upstream} unreachable: {exc.os_error}", kind="connect") from exc
    except (aiohttp.ServerTimeoutError, asyncio.TimeoutError) as exc:
        raise UpstreamError(f"{upstream} timed out", kind="timeout") from exc
    except aiohttp.ClientPayloadError as exc:
        raise UpstreamError(f"{upstream} stream was cut", kind="protocol") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamError(f"{upstream} connection failed: {exc}", kind="connect") from exc


async def read_error_body(resp: aiohttp.ClientResponse) -> tuple[Any, str]:
    """The decoded JSON (or None) and raw text of a non-200 answer, read with a bound."""
    raw = await resp.content.read(ERROR_BODY_LIMIT)
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text), text
    except ValueError:
        return None, text


async def read_json(resp: aiohttp.ClientResponse, upstream: str, limit: int) -> Any:
    """The JSON body of a 200 answer in non-stream mode, refusing garbage and huge bodies."""
    raw = await resp.content.read(limit + 1)
    if len(raw) > limit:
        raise UpstreamError(f"{upstream} answer too large", kind="protocol", marks_down=False)
    try:
        return json.loads(raw)
    except ValueError:
        raise UpstreamError(
            f"{upstream} answered with something that is not JSON: {raw[:80]!r}", kind="protocol"
        ) from None


def status_error(
    upstream: str, status: int, message: str, *, failover: bool, marks_down: bool
) -> UpstreamError:
    return UpstreamError(
        f"{upstream}: {message} (HTTP {status})",
        kind="status",
        failover=failover,
        marks_down=marks_down,
    )


def snippet(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


Extractor = Callable[[Any], str | None]


def upstream_message(body: Any, raw: str, extract: Extractor) -> str:
    """The upstream's own error message, else a short excerpt of what it sent."""
    message = extract(body) if body is not None else None
    return message or snippet(raw) or "empty error body"


StatusErrorFactory = Callable[[aiohttp.ClientResponse], Awaitable[UpstreamError]]


@asynccontextmanager
async def streaming_post(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    upstream: str,
    on_status: StatusErrorFactory,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """POST and hand over the 200 response whose body is a stream.

    Leaving the block by any exception (the client left, a timeout, a broken stream)
    closes the connection instead of returning it to the pool, which is what makes
    llama-server and Ollama stop generating.
    """
    async with translated(upstream), session.post(url, json=body) as resp:
        if resp.status != 200:
            raise await on_status(resp)
        try:
            yield resp
        except BaseException:
            resp.close()
            raise


async def post_json(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    upstream: str,
    on_status: StatusErrorFactory,
    limit: int,
) -> Any:
    """POST in the upstream's non-stream mode and return its decoded JSON answer."""
    async with translated(upstream), session.post(url, json=body) as resp:
        if resp.status != 200:
            raise await on_status(resp)
        return await read_json(resp, upstream, limit)
