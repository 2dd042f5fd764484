"""Picks the backends for a request and walks them until one answers (docs/architecture.md).

For each candidate the capacity decides where the request starts (a free slot, a short
queue, or a spill to the next backend); the request waits for its slot, then streams.
Failover happens only before the first chunk reached the client; after that a failure ends
the answer (`StreamBroken`), so two models' outputs are never spliced together.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Protocol

from pollex.adapters import Adapter, Backend, Backends, Finish, Usage
from pollex.errors import (
    ClientStalled,
    NoAdapterServed,
    OutputTooLong,
    RequestTimeout,
    ServerShuttingDown,
    StreamBroken,
    UnknownModel,
    UpstreamError,
)
from pollex.metrics import Metrics
from pollex.parsing import encodable
from pollex.routing.availability import Availability
from pollex.routing.capacity import Capacity
from pollex.routing.jobs import Job
from pollex.routing.watchdog import SHUTDOWN, TOTAL, Watchdog


class Sink(Protocol):
    """Where a streamed answer goes as it is produced (the web face's stream writer)."""

    async def queued(self, position: int, model: str, estimated_wait_s: float | None) -> None: ...

    async def start(self, adapter: Adapter, fallback_from: str | None) -> None: ...

    async def text(self, chunk: str) -> None: ...


@dataclass(frozen=True)
class Plan:
    intended: Backend
    candidates: tuple[Backend, ...]

    @property
    def skipped(self) -> bool:
        return self.candidates[0] is not self.intended


@dataclass(frozen=True)
class Served:
    """The whole answer; `adapter` is the host that gave it, `first_chunk_at` when its
    first chunk arrived (perf_counter)."""

    adapter: Adapter
    fallback_from: str | None
    text: str
    finish: Finish
    first_chunk_at: float


class Router:
    def __init__(
        self,
        backends: Backends,
        availability: Availability,
        capacity: Capacity,
        metrics: Metrics,
        *,
        max_output_chars: int,
        retry_after_s: float,
        silent_s: float,
    ) -> None:
        self._backends = backends
        self._availability = availability
        self._capacity = capacity
        self._metrics = metrics
        self._max_output_chars = max_output_chars
        # What a client that found no backend should wait: by then the probes looked again.
        self._retry_after_s = retry_after_s
        # A stream this long without a chunk is not producing (what a probe lasts at most).
        self._silent_s = silent_s

    def routable(self, backend: Backend) -> bool:
        return any(self._availability.is_routable(h) for h in backend.hosts)

    def plan(self, model_id: str | None, fallback: bool) -> Plan:
        """The backends to try in order. Raises `UnknownModel` before anything is sent."""
        if model_id is not None:
            if model_id not in self._backends.by_id:
                raise UnknownModel(f"unknown model: {model_id}")
            intended = self._backends.by_id[model_id]
        else:
            intended = self._backends.chain[0]
        order = [intended]
        if fallback:
            order += [b for b in self._backends.chain if b is not intended]
        # Skip what is known to be down; if that is everything, the cache may be stale.
        live = [b for b in order if self.routable(b)]
        return Plan(intended, tuple(live or order))

    async def serve(self, plan: Plan, job: Job, sink: Sink | None, watchdog: Watchdog) -> Served:
        """The answer of the first candidate that gives one; `sink` (if any) sees it as it
        streams. Raises `NoAdapterServed` when every candidate failed before its first
        chunk, `StreamBroken` when one failed after it, `QueueFull` when every candidate's
        queue is full."""
        failures: list[tuple[str, str]] = []
        remaining = list(plan.candidates)
        previous: Backend | None = plan.intended if plan.skipped else None
        while remaining:
            index, host = self._capacity.place(remaining)
            passed_over = remaining[0]
            backend = remaining.pop(index)
            if previous is not None:
                self._metrics.failovers.labels(previous.id, backend.id).inc()
            elif index > 0:
                self._metrics.spills.labels(passed_over.id, backend.id).inc()
            previous = backend
            fallback_from = None if backend is plan.intended else plan.intended.id
            try:
                return await self._on_slot(host, fallback_from, job, sink, watchdog)
            except UpstreamError as exc:
                if not exc.failover:
                    raise
                failures.append((host.name, exc.message))
        raise NoAdapterServed(failures, self._retry_after_s)

    async def _on_slot(
        self,
        host: Adapter,
        fallback_from: str | None,
        job: Job,
        sink: Sink | None,
        watchdog: Watchdog,
    ) -> Served:
        """Wait for a slot on `host` (in line, told its place), then stream the answer."""
        slots = self._capacity.of(host)
        on_position = None
        if sink is not None:
            queued = sink.queued

            async def on_position(position: int, wait: float | None) -> None:
                await queued(position, host.id, wait)

        asked = time.perf_counter()
        try:
            await slots.acquire(on_position)
        except asyncio.CancelledError:
            raise self._cancelled(watchdog) from None
        started = time.perf_counter()
        self._metrics.queue_wait.labels(host.id).observe(started - asked)
        served = None
        try:
            served = await self._attempt(host, fallback_from, job, sink, watchdog)
            return served
        finally:
            slots.release(time.perf_counter() - started if served else None)

    async def _attempt(
        self,
        host: Adapter,
        fallback_from: str | None,
        job: Job,
        sink: Sink | None,
        watchdog: Watchdog,
    ) -> Served:
        finish = Finish()
        parts: list[str] = []
        chars = 0
        first_chunk_at = 0.0
        writing = False  # waiting on the client, not on the upstream
        watchdog.begin_attempt(host.first_token_timeout_s)
        stop_listening = self._availability.on_down(host, watchdog.abort)
        try:
            for before, chat in job.requests(self._capacity.context(host)):
                if parts and before:  # between pieces: the text's own separator
                    parts.append(before)
                    chars += len(before)
                    if sink is not None:
                        writing = True
                        await sink.text(before)
                        writing = False
                piece = Finish()
                produced = False
                async with aclosing(host.stream(chat, piece)) as chunks:
                    async for chunk in chunks:
                        watchdog.progress()
                        produced = True
                        if not parts:
                            first_chunk_at = time.perf_counter()
                            stop_listening()
                            stop_listening = self._availability.on_down(
                                host, self._abort_if_silent(watchdog)
                            )
                            self._availability.streaming(host, watchdog, True)
                            if sink is not None:
                                await sink.start(host, fallback_from)
                        parts.append(chunk)
                        chars += len(chunk)
                        if chars > self._max_output_chars:
                            raise OutputTooLong()
                        if sink is not None:
                            writing = True
                            await sink.text(chunk)
                            writing = False
                if not produced:
                    raise UpstreamError(
                        f"{host.name} returned an empty answer", kind="protocol", marks_down=False
                    )
                finish = _merged(finish, piece)
        except asyncio.CancelledError:
            stop_listening()
            reason = watchdog.take_expiry()
            if reason is None:
                raise
            if reason == TOTAL:
                raise RequestTimeout("request timeout") from None
            if reason == SHUTDOWN:
                raise ServerShuttingDown(self._retry_after_s) from None
            if writing:
                raise ClientStalled() from None
            error = self._timeout_error(host, reason)
            self._failed(host, error)
            raise (StreamBroken(error) if parts else error) from None
        except UpstreamError as exc:
            stop_listening()
            self._failed(host, exc)
            if parts:
                raise StreamBroken(exc) from exc
            raise
        finally:
            stop_listening()
            if parts:
                self._availability.streaming(host, watchdog, False)
        self._availability.mark_up(host)
        return Served(host, fallback_from, encodable("".join(parts)), finish, first_chunk_at)

    def _cancelled(self, watchdog: Watchdog) -> BaseException:
        """A cancellation while waiting for a slot, as what it means."""
        reason = watchdog.take_expiry()
        if reason == TOTAL:
            return RequestTimeout("request timeout")
        if reason == SHUTDOWN:
            return ServerShuttingDown(self._retry_after_s)
        return asyncio.CancelledError()

    def _abort_if_silent(self, watchdog: Watchdog) -> Callable[[str], None]:
        """Once text flows, the host going down ends this stream only if it has gone silent
        (a frozen server): a stream still producing is left to finish."""
        loop = asyncio.get_running_loop()

        def listener(reason: str) -> None:
            last = watchdog.last_progress
            if last is None or loop.time() - last >= self._silent_s:
                watchdog.abort(reason)

        return listener

    def _timeout_error(self, host: Adapter, reason: str) -> UpstreamError:
        if reason == "first_token":
            message = f"no first token within {host.first_token_timeout_s:g} s"
        elif reason == "idle":
            message = "upstream stopped sending output"
        else:
            message = reason
        return UpstreamError(message, kind="timeout", status=504)

    def _failed(self, host: Adapter, error: UpstreamError) -> None:
        self._metrics.upstream_errors.labels(host.id, error.kind).inc()
        if error.marks_down:
            self._availability.mark_down(host, error.message)


def _merged(whole: Finish, piece: Finish) -> Finish:
    """How an answer in pieces ended: cut short if any piece was; its usage summed."""
    reason = "length" if "length" in (whole.reason, piece.reason) else piece.reason
    usage = piece.usage
    if whole.usage is not None and usage is not None:
        done = whole.usage.completion_tokens + usage.completion_tokens
        speeds = [
            (u.tokens_per_second, u.completion_tokens)
            for u in (whole.usage, usage)
            if u.tokens_per_second is not None
        ]
        weight = sum(n for _, n in speeds)
        speed = round(sum(s * n for s, n in speeds) / weight, 2) if weight else None
        usage = Usage(whole.usage.prompt_tokens + usage.prompt_tokens, done, speed)
    return Finish(reason, usage or whole.usage, piece.ended)
