"""The HTTP side of `pollex bench`: the models pollex has, and one timed, streamed polish.

Times are taken here, on the client, from just before the request is sent: to the first
`delta` event (TTFT) and to the `done` event (total). A 429 is waited out (`Retry-After`)
and the request sent again, up to RATE_LIMITED_TRIES times; the wait is not timed.

Failures are sorted by what they mean for a bench: `Failure` (pollex.client.answers) stops
it (pollex itself cannot be used: wrong key, not a pollex, a stream broken off),
`RequestFailed` is one request that
did not work, `down=True` when pollex says the model cannot serve at all (a 503). The exit
statuses are those of `pollex polish` for the same meanings. aiohttp is imported when the
bench starts, so `pollex --help` stays quick.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from pollex.client.answers import (
    EXIT_AUTH,
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    EXIT_UNREACHABLE,
    EXIT_UPSTREAM,
    EXIT_USAGE,
    Failure,
    error_message,
    from_pollex,
    not_pollex,
)
from pollex.client.report import Run
from pollex.parsing import SSEDecoder

if TYPE_CHECKING:
    import aiohttp

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 120.0  # pollex sends `: keep-alive` after 15 s of silence
RATE_LIMITED_TRIES = 5


class RequestFailed(Failure):
    """One request did not work; `down` when pollex says the model cannot serve at all."""

    def __init__(self, message: str, exit_code: int, *, down: bool = False) -> None:
        super().__init__(message, exit_code)
        self.down = down


@asynccontextmanager
async def connection(url: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A session for talking to pollex at `url`; losing pollex becomes a `Failure`."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            yield session
    except aiohttp.InvalidURL:
        raise Failure(f"invalid URL: {url}", EXIT_USAGE) from None
    except aiohttp.ClientConnectorError as exc:
        errno = exc.os_error.errno or 0  # > 0: an OS error; < 0: a resolver one
        reason = (os.strerror(errno) if errno > 0 else exc.os_error.strerror) or str(exc)
        raise Failure(f"cannot reach pollex at {url}: {reason}", EXIT_UNREACHABLE) from None
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        detail = str(exc) or type(exc).__name__
        raise Failure(f"lost the connection to pollex: {detail}", EXIT_UNREACHABLE) from None


class Http:
    """Talks to one pollex over one session (kept alive: connecting is not timed twice).

    `on_text(chars)` hears of every delta; `on_wait(seconds)` of every rate-limit wait.
    aiohttp's own exceptions pass through to `connection`, which words them.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        api_key: str | None,
        on_text: Callable[[int], None],
        on_wait: Callable[[float], None],
    ) -> None:
        self._session = session
        self._url = url.rstrip("/")
        self._headers = {"X-API-Key": api_key} if api_key else {}
        self._on_text = on_text
        self._on_wait = on_wait

    async def models(self) -> dict[str, bool]:
        """`GET /api/models` as {id: available}, in pollex's order."""
        response, _ = await self._send("GET", "/api/models", None)
        async with response:
            body = await response.read()
        if response.status != 200:
            failure = classify(response.status, body)
            if not isinstance(failure, RequestFailed):
                raise failure
            raise Failure(f"GET {self._url}/api/models: {failure}", EXIT_FAILURE)
        try:
            listed = json.loads(body)
            return {str(m["id"]): m.get("available") is not False for m in listed}
        except (ValueError, TypeError, KeyError, AttributeError):
            message = (
                f"{self._url} is not a pollex: GET /api/models did not answer a list of models"
            )
            raise Failure(message, EXIT_FAILURE) from None

    async def polish(self, model: str, text: str, run: int) -> Run:
        """One streamed polish pinned to `model`, timed; raises `RequestFailed`."""
        body = {"text": text, "model_id": model, "stream": True, "fallback": False}
        response, started = await self._send("POST", "/api/polish", body)
        async with response:
            if response.status != 200:
                raise classify(response.status, await response.read(), response.headers, self._url)
            if not response.headers.get("Content-Type", "").startswith("text/event-stream"):
                raise RequestFailed("pollex did not answer with an event stream", EXIT_FAILURE)
            first: float | None = None
            decoder = SSEDecoder()
            async for chunk in response.content.iter_any():
                try:
                    events = decoder.feed(chunk)
                except ValueError:  # a line over 1 MiB: not what pollex sends
                    raise Failure("pollex sent an invalid event stream", EXIT_FAILURE) from None
                for event in events:
                    data = _payload(event.event, event.data)
                    if event.event == "delta" and isinstance(data.get("text"), str):
                        if first is None:
                            first = time.perf_counter()
                        self._on_text(len(data["text"]))
                    elif event.event == "done":
                        return _measured(model, run, data, started, first)
                    elif event.event == "error":
                        message = str(data.get("error") or "the polish failed")
                        down = data.get("status") == 503
                        raise RequestFailed(message, EXIT_UPSTREAM, down=down)
        raise Failure("pollex closed the stream before the answer was complete", EXIT_UNREACHABLE)

    async def _send(
        self, method: str, path: str, body: dict[str, Any] | None
    ) -> tuple[aiohttp.ClientResponse, float]:
        """The response (to be read by the caller) and when its request was sent."""
        tries = 0
        while True:
            started = time.perf_counter()
            response = await self._session.request(
                method, self._url + path, json=body, headers=self._headers
            )
            tries += 1
            if response.status != 429 or tries >= RATE_LIMITED_TRIES:
                return response, started
            response.release()
            wait = retry_after(response.headers.get("Retry-After"))
            self._on_wait(wait)
            await asyncio.sleep(wait)


def _measured(
    model: str, run: int, done: dict[str, Any], started: float, first: float | None
) -> Run:
    now = time.perf_counter()
    polished = done.get("polished")
    usage = done.get("usage")
    speed = usage.get("tokens_per_second") if isinstance(usage, dict) else None
    return Run(
        model,
        run,
        ttft_s=None if first is None else round(first - started, 4),
        total_s=round(now - started, 4),
        output_chars=len(polished) if isinstance(polished, str) else None,
        tokens_per_second=float(speed) if isinstance(speed, (int, float)) else None,
        output=polished if isinstance(polished, str) else None,
    )


def _payload(name: str, data: str) -> dict[str, Any]:
    try:
        payload = json.loads(data)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise Failure(f"pollex sent an invalid {name} event", EXIT_FAILURE)
    return payload


def classify(
    status: int, body: bytes, headers: Mapping[str, str] | None = None, url: str = ""
) -> Failure:
    """An HTTP error status; 401/403, and an answer that is not pollex's (given its
    `headers`), stop the bench; the others fail a request."""
    if headers is not None and not from_pollex(headers, body):
        return not_pollex(url, status)
    message = error_message(body) or f"HTTP {status}"
    if status in (401, 403):
        return Failure(message, EXIT_AUTH)
    if status in (400, 413):
        return RequestFailed(message, EXIT_BAD_INPUT)
    if status >= 500:
        return RequestFailed(message, EXIT_UPSTREAM, down=status == 503)
    return RequestFailed(f"{message} (HTTP {status})", EXIT_FAILURE)


def retry_after(value: str | None) -> float:
    """`Retry-After` in seconds (pollex sends whole seconds); 1 when absent or a date."""
    try:
        seconds = float(value or "1")
    except ValueError:
        return 1.0
    return min(max(seconds, 0.0), 600.0) if math.isfinite(seconds) else 1.0
