"""One polish over HTTP, for both APIs: the JSON answer, the streamed answer.

The route modules parse their request into a `Plan` and a `Job` and pick a JSON body or
a `Wire`; from there the path is the same: the router serves under the request's time
limits (a watchdog, known to graceful shutdown), then the outcome is logged and counted
once. A failure before anything was sent propagates to the middleware, which answers it in
the API's error shape; once a stream's headers are out, every failure — an unexpected
exception included — is an in-band error of the wire, never a second response.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import structlog
from aiohttp import web

from pollex.adapters import Adapter
from pollex.errors import BadRequest, ClientStalled, PollexError, RequestTimeout
from pollex.routing.jobs import Job
from pollex.routing.router import Plan, Served, Sink
from pollex.routing.watchdog import Watchdog
from pollex.web.errors import record_failure
from pollex.web.keys import CONFIG, IN_FLIGHT, LOG_FIELDS, METRICS, ROUTER
from pollex.web.sse import EventStream
from pollex.web.wires import Answer, Wire

log = structlog.get_logger("pollex.exchange")


async def read_json_body(request: web.Request) -> Any:
    """The decoded body; aiohttp enforces `client_max_size` (413) while reading it."""
    raw = await request.read()
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise BadRequest("request body is not UTF-8") from None
    except (ValueError, RecursionError):
        raise BadRequest("request body is not valid JSON") from None


def count_input(request: web.Request, job: Job) -> None:
    request[LOG_FIELDS]["input_chars"] = job.input_chars
    request.config_dict[METRICS].input_chars.observe(job.input_chars)


async def serve_json(
    request: web.Request,
    plan: Plan,
    job: Job,
    started: float,
    body: Callable[[Answer], dict[str, Any]],
) -> web.Response:
    """The whole answer as one JSON body, under `request_timeout_s`."""
    timeout_s = request.config_dict[CONFIG].request_timeout_s
    served = await _serve(request, plan, job, None, timeout_s)
    return web.json_response(body(_succeeded(request, served, started)))


async def serve_stream(
    request: web.Request,
    plan: Plan,
    job: Job,
    started: float,
    wire: Wire,
    *,
    defer_headers: bool,
) -> web.StreamResponse:
    """The answer as it is generated, in `wire`'s format, under `stream_timeout_s`."""
    config = request.config_dict[CONFIG]
    stream = EventStream(request, config.keepalive_s, defer=defer_headers)
    # A client that cannot take the last few hundred bytes in this long is gone.
    last_write_s = config.idle_timeout_s
    with _stream_in_progress(request):
        try:
            if not defer_headers:
                await stream.open()
            try:
                served = await _serve(
                    request, plan, job, _StreamSink(stream, wire), config.stream_timeout_s
                )
            except PollexError as exc:
                if not stream.opened:
                    raise
                record_failure(request, exc)
                if isinstance(exc, ClientStalled):
                    stream.abort()  # it is not reading: nothing more can reach it
                    return stream.response
                message = "stream timeout" if isinstance(exc, RequestTimeout) else exc.message
                await stream.finish(wire.error(message, exc.status), last_write_s)
            except ConnectionError:
                raise  # the client is gone: nothing to tell it
            except Exception:
                if not stream.opened:
                    raise
                # A bug, after the headers went out: end the stream, never a second response.
                log.exception("unhandled_error")
                request[LOG_FIELDS].update(outcome="upstream_error", error="internal error")
                await stream.finish(wire.error("internal error", 500), last_write_s)
            else:
                await stream.finish(wire.done(_succeeded(request, served, started)), last_write_s)
        finally:
            stream.close()
    return stream.response


class _StreamSink:
    """Writes the answer as it streams. `start` is held back and sent with the first
    text: one write to the socket, not two."""

    def __init__(self, stream: EventStream, wire: Wire) -> None:
        self._stream = stream
        self._wire = wire
        self._pending = b""

    async def queued(self, position: int, model: str, estimated_wait_s: float | None) -> None:
        data = self._wire.queued(position, model, estimated_wait_s)
        if data:
            await self._stream.write(data)

    async def start(self, adapter: Adapter, fallback_from: str | None) -> None:
        self._pending = self._wire.start(adapter, fallback_from)

    async def text(self, chunk: str) -> None:
        data = self._wire.text(chunk)
        if self._pending:
            data, self._pending = self._pending + data, b""
        await self._stream.write(data)


async def _serve(
    request: web.Request, plan: Plan, job: Job, sink: Sink | None, total_s: float
) -> Served:
    """`Router.serve` under the request's time limits, known to graceful shutdown."""
    app = request.config_dict
    watchdog = Watchdog(idle_s=app[CONFIG].idle_timeout_s, total_s=total_s)
    try:
        with app[IN_FLIGHT].track(watchdog):
            return await app[ROUTER].serve(plan, job, sink, watchdog)
    finally:
        watchdog.stop()


@contextlib.contextmanager
def _stream_in_progress(request: web.Request) -> Iterator[None]:
    """A streamed answer: counted in `streams_in_flight`; a client that leaves during it is
    logged as `client_gone` (a connection error ends the answer quietly)."""
    in_flight = request.config_dict[METRICS].streams_in_flight
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


def _succeeded(request: web.Request, served: Served, started: float) -> Answer:
    """Count and log a served answer; its timings as both APIs report them."""
    elapsed = time.perf_counter() - started
    ttft = served.first_chunk_at - started
    model = served.adapter.id
    metrics = request.config_dict[METRICS]
    metrics.polish_duration.labels(model).observe(elapsed)
    metrics.ttft.labels(model).observe(ttft)
    answer = Answer(served, round(elapsed * 1000), round(ttft * 1000))
    request[LOG_FIELDS].update(
        model=model,
        provider=served.adapter.provider,
        fallback_from=served.fallback_from,
        ttft_ms=answer.ttft_ms,
        output_chars=len(served.text),
        outcome="ok",
    )
    return answer
