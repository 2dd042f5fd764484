"""HTTP handlers: the only place where pollex's errors become HTTP statuses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pollex import __version__
from pollex.adapters import Adapter, ChatRequest
from pollex.errors import PollexError
from pollex.http_errors import error_response
from pollex.keys import (
    AVAILABILITY,
    BACKENDS,
    CONFIG,
    IN_FLIGHT,
    LOG_FIELDS,
    METRICS,
    REQUEST_ID,
    ROUTER,
    SYSTEM_PROMPT,
)
from pollex.router import Plan, RequestTimeout, Served, Sink
from pollex.sse import EventStream, dumps, encode
from pollex.watchdog import Watchdog

DELTA_PREFIX = b'event: delta\ndata: {"text":'
DELTA_SUFFIX = b"}\n\n"


class BadRequest(PollexError):
    status = 400


@dataclass(frozen=True)
class PolishParams:
    text: str
    model_id: str | None
    stream: bool
    fallback: bool

    @classmethod
    def parse(cls, body: Any, max_text_chars: int) -> PolishParams:
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        text = body.get("text")
        if not isinstance(text, str):
            raise BadRequest("text: required, must be a string")
        if not text.strip():
            raise BadRequest("text: must not be empty")
        if len(text) > max_text_chars:
            raise BadRequest(f"text: longer than {max_text_chars} characters")
        model_id = body.get("model_id")
        if model_id is not None and not isinstance(model_id, str):
            raise BadRequest("model_id: must be a string")
        return cls(
            text, model_id or None, _flag(body, "stream", False), _flag(body, "fallback", True)
        )


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"{name}: must be true or false")
    return value


async def read_json_body(request: web.Request) -> Any:
    """The decoded body; aiohttp enforces `client_max_size` (413) while reading it."""
    raw = await request.read()
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise BadRequest("request body is not UTF-8") from None
    except (ValueError, RecursionError):
        raise BadRequest("request body is not valid JSON") from None


class TimedSink:
    """Records when the first chunk of the answer went out."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.first_at: float | None = None

    def mark_first(self) -> None:
        self.first_at = time.perf_counter()

    @property
    def ttft_ms(self) -> int | None:
        return None if self.first_at is None else round((self.first_at - self.started) * 1000)


class Collector(TimedSink):
    async def start(self, adapter: Adapter, fallback_from: str | None) -> None:
        self.mark_first()

    async def text(self, chunk: str) -> None:
        return None


class _EventSink(TimedSink):
    def __init__(self, started: float, stream: EventStream, request_id: str) -> None:
        super().__init__(started)
        self._stream = stream
        self._request_id = request_id
        self._pending = b""

    async def start(self, adapter: Adapter, fallback_from: str | None) -> None:
        """Held back and sent with the first delta: one write to the socket, not two."""
        self.mark_first()
        self._pending = encode(
            "start",
            {
                "request_id": self._request_id,
                "model": adapter.id,
                "provider": adapter.provider,
                "fallback_from": fallback_from,
            },
        )

    async def text(self, chunk: str) -> None:
        delta = DELTA_PREFIX + dumps(chunk).encode() + DELTA_SUFFIX
        if self._pending:
            delta, self._pending = self._pending + delta, b""
        await self._stream.write(delta)


async def polish(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    app = request.app
    config = app[CONFIG]
    params = PolishParams.parse(await read_json_body(request), config.max_text_chars)
    plan = app[ROUTER].plan(params.model_id, params.fallback)
    chat = ChatRequest.polish(params.text, app[SYSTEM_PROMPT], config.max_output_tokens)
    fields = request[LOG_FIELDS]
    fields["input_chars"] = len(params.text)
    app[METRICS].input_chars.observe(len(params.text))
    wants_sse = params.stream or "text/event-stream" in request.headers.get("Accept", "")
    if wants_sse:
        return await _polish_sse(request, plan, chat, started)
    return await _polish_json(request, plan, chat, started)


async def serve_guarded(
    request: web.Request, plan: Plan, chat: ChatRequest, sink: Sink, total_s: float
) -> Served:
    """`Router.serve` under the request's time limits, known to graceful shutdown."""
    app = request.app
    watchdog = Watchdog(idle_s=app[CONFIG].idle_timeout_s, total_s=total_s)
    try:
        with app[IN_FLIGHT].track(watchdog):
            return await app[ROUTER].serve(plan, chat, sink, watchdog)
    finally:
        watchdog.stop()


async def serve_whole(
    request: web.Request, plan: Plan, chat: ChatRequest, started: float
) -> tuple[Served, int]:
    """A non-stream answer under `request_timeout_s`, logged and counted either way.

    Returns the answer and its `elapsed_ms`; a failure is logged, then raised.
    """
    sink = Collector(started)
    timeout_s = request.app[CONFIG].request_timeout_s
    try:
        served = await serve_guarded(request, plan, chat, sink, timeout_s)
    except PollexError as exc:
        log_failure(request, exc)
        raise
    return served, record_success(request, served, sink, started)


async def _polish_json(
    request: web.Request, plan: Plan, chat: ChatRequest, started: float
) -> web.Response:
    try:
        served, elapsed_ms = await serve_whole(request, plan, chat, started)
    except PollexError as exc:
        return error_response(request, exc.status, exc.message)
    return web.json_response(
        {
            "polished": served.text.strip(),
            "model": served.adapter.id,
            "elapsed_ms": elapsed_ms,
            "provider": served.adapter.provider,
            "fallback_from": served.fallback_from,
        }
    )


async def _polish_sse(
    request: web.Request, plan: Plan, chat: ChatRequest, started: float
) -> web.StreamResponse:
    app = request.app
    config = app[CONFIG]
    stream = EventStream(request, config.keepalive_s)
    try:
        await stream.open()
    except ConnectionError:
        request[LOG_FIELDS]["outcome"] = "client_gone"
        return stream.response
    sink = _EventSink(started, stream, request[REQUEST_ID])
    # A client that cannot take the last few hundred bytes in this long is gone.
    last_write_s = config.idle_timeout_s
    with stream_in_progress(request):
        try:
            try:
                served = await serve_guarded(request, plan, chat, sink, config.stream_timeout_s)
            except PollexError as exc:
                log_failure(request, exc)
                error = {"error": stream_error_message(exc), "status": exc.status}
                await stream.finish(encode("error", error), last_write_s)
            else:
                done = _done_event(served, sink, record_success(request, served, sink, started))
                await stream.finish(encode("done", done), last_write_s)
        finally:
            stream.stop_keepalive()
    return stream.response


@contextlib.contextmanager
def stream_in_progress(request: web.Request) -> Iterator[None]:
    """A streamed answer: counted in `streams_in_flight`; a client that leaves during it is
    logged as `client_gone` (a connection error ends the answer quietly)."""
    in_flight = request.app[METRICS].streams_in_flight
    in_flight.inc()
    try:
        yield
    except asyncio.CancelledError:
        request[LOG_FIELDS]["outcome"] = "client_gone"
        raise
    except ConnectionError:
        request[LOG_FIELDS]["outcome"] = "client_gone"
    finally:
        in_flight.dec()


def stream_error_message(exc: PollexError) -> str:
    """A stream's own time limit says so; other failures keep their message."""
    return "stream timeout" if isinstance(exc, RequestTimeout) else exc.message


def _done_event(served: Served, sink: TimedSink, elapsed_ms: int) -> dict[str, Any]:
    done: dict[str, Any] = {
        "polished": served.text.strip(),
        "model": served.adapter.id,
        "provider": served.adapter.provider,
        "elapsed_ms": elapsed_ms,
        "ttft_ms": sink.ttft_ms,
        "fallback_from": served.fallback_from,
        "finish_reason": served.finish.reason,
    }
    if served.finish.usage is not None:
        done["usage"] = served.finish.usage.as_dict()
    return done


def record_success(request: web.Request, served: Served, sink: TimedSink, started: float) -> int:
    elapsed = time.perf_counter() - started
    model = served.adapter.id
    metrics = request.app[METRICS]
    metrics.polish_duration.labels(model).observe(elapsed)
    if sink.first_at is not None:
        metrics.ttft.labels(model).observe(sink.first_at - started)
    request[LOG_FIELDS].update(
        model=model,
        provider=served.adapter.provider,
        fallback_from=served.fallback_from,
        ttft_ms=sink.ttft_ms,
        output_chars=len(served.text),
        outcome="ok",
    )
    return round(elapsed * 1000)


def log_failure(request: web.Request, exc: PollexError) -> None:
    outcome = "timeout" if exc.status == 504 else "no_backend" if exc.status == 503 else None
    request[LOG_FIELDS].update(outcome=outcome or "upstream_error", error=exc.message)


async def models(request: web.Request) -> web.Response:
    availability = request.app[AVAILABILITY]
    return web.json_response(
        [
            {
                "id": a.id,
                "name": a.name,
                "provider": a.provider,
                "available": availability.is_routable(a.id),
            }
            for a in request.app[BACKENDS].listed()
        ]
    )


async def health(request: web.Request) -> web.Response:
    availability = request.app[AVAILABILITY]
    backends = request.app[BACKENDS]
    adapters = {a.id: availability.state(a.id).as_health(a.provider) for a in backends.listed()}
    if availability.is_routable(backends.chain[0].id):
        status = "ok"
    elif any(availability.is_routable(a.id) for a in backends.chain):
        status = "degraded"
    else:
        status = "down"
    body = {"status": status, "version": __version__, "adapters": adapters}
    return web.json_response(body, status=503 if status == "down" else 200)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
