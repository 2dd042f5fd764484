"""Picks the adapters for a request and walks them until one answers (design §4).

Failover happens only before the first chunk reached the client; after that a failure
ends the answer (`StreamBroken`), so two models' outputs are never spliced together.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from dataclasses import dataclass
from typing import Protocol

from pollex.adapters import Adapter, Backends, ChatRequest, Finish
from pollex.errors import (
    NoAdapterServed,
    OutputTooLong,
    RequestTimeout,
    ServerShuttingDown,
    StreamBroken,
    UnknownModel,
    UpstreamError,
)
from pollex.metrics import Metrics
from pollex.routing.availability import Availability
from pollex.routing.watchdog import SHUTDOWN, TOTAL, Watchdog


class Sink(Protocol):
    """Where a streamed answer goes as it is produced (the web face's stream writer)."""

    async def start(self, adapter: Adapter, fallback_from: str | None) -> None: ...

    async def text(self, chunk: str) -> None: ...


@dataclass(frozen=True)
class Plan:
    intended: Adapter
    candidates: tuple[Adapter, ...]

    @property
    def skipped(self) -> bool:
        return self.candidates[0] is not self.intended


@dataclass(frozen=True)
class Served:
    """The whole answer; `first_chunk_at` is when its first chunk arrived (perf_counter)."""

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
        metrics: Metrics,
        *,
        max_output_chars: int,
        retry_after_s: float,
    ) -> None:
        self._backends = backends
        self._availability = availability
        self._metrics = metrics
        self._max_output_chars = max_output_chars
        # What a client that found no backend should wait: by then the probes looked again.
        self._retry_after_s = retry_after_s

    def plan(self, model_id: str | None, fallback: bool) -> Plan:
        """The adapters to try in order. Raises `UnknownModel` before anything is sent."""
        if model_id is not None:
            if model_id not in self._backends.by_id:
                raise UnknownModel(f"unknown model: {model_id}")
            intended = self._backends.by_id[model_id]
        else:
            intended = self._backends.chain[0]
        order = [intended]
        if fallback:
            order += [a for a in self._backends.chain if a is not intended]
        # Skip what is known to be down; if that is everything, the cache may be stale.
        live = [a for a in order if self._availability.is_routable(a.id)]
        return Plan(intended, tuple(live or order))

    async def serve(
        self, plan: Plan, chat: ChatRequest, sink: Sink | None, watchdog: Watchdog
    ) -> Served:
        """The answer of the first candidate that gives one; `sink` (if any) sees it as it
        streams. Raises `NoAdapterServed` when every candidate failed before its first
        chunk, `StreamBroken` when one failed after it."""
        failures: list[tuple[str, str]] = []
        previous: Adapter | None = plan.intended if plan.skipped else None
        for adapter in plan.candidates:
            if previous is not None:
                self._metrics.failovers.labels(previous.id, adapter.id).inc()
            previous = adapter
            fallback_from = None if adapter is plan.intended else plan.intended.id
            try:
                return await self._attempt(adapter, fallback_from, chat, sink, watchdog)
            except UpstreamError as exc:
                if not exc.failover:
                    raise
                failures.append((adapter.name, exc.message))
        raise NoAdapterServed(failures, self._retry_after_s)

    async def _attempt(
        self,
        adapter: Adapter,
        fallback_from: str | None,
        chat: ChatRequest,
        sink: Sink | None,
        watchdog: Watchdog,
    ) -> Served:
        finish = Finish()
        parts: list[str] = []
        chars = 0
        first_chunk_at = 0.0
        watchdog.begin_attempt(adapter.first_token_timeout_s)
        stop_listening = self._availability.on_down(adapter.id, watchdog.abort)
        try:
            async with aclosing(adapter.stream(chat, finish)) as chunks:
                async for chunk in chunks:
                    watchdog.progress()
                    if not parts:
                        first_chunk_at = time.perf_counter()
                        stop_listening()
                        self._availability.streaming(adapter.id, +1)
                        if sink is not None:
                            await sink.start(adapter, fallback_from)
                    parts.append(chunk)
                    chars += len(chunk)
                    if chars > self._max_output_chars:
                        raise OutputTooLong()
                    if sink is not None:
                        await sink.text(chunk)
        except asyncio.CancelledError:
            stop_listening()
            reason = watchdog.take_expiry()
            if reason is None:
                raise
            if reason == TOTAL:
                raise RequestTimeout("request timeout") from None
            if reason == SHUTDOWN:
                raise ServerShuttingDown(self._retry_after_s) from None
            error = self._timeout_error(adapter, reason)
            self._failed(adapter, error)
            raise (StreamBroken(error) if parts else error) from None
        except UpstreamError as exc:
            stop_listening()
            self._failed(adapter, exc)
            if parts:
                raise StreamBroken(exc) from exc
            raise
        finally:
            stop_listening()
            if parts:
                self._availability.streaming(adapter.id, -1)
        if not parts:
            error = UpstreamError(
                f"{adapter.name} returned an empty answer", kind="protocol", marks_down=False
            )
            self._failed(adapter, error)
            raise error
        self._availability.mark_up(adapter)
        return Served(adapter, fallback_from, "".join(parts), finish, first_chunk_at)

    def _timeout_error(self, adapter: Adapter, reason: str) -> UpstreamError:
        if reason == "first_token":
            message = f"no first token within {adapter.first_token_timeout_s:g} s"
        elif reason == "idle":
            message = "upstream stopped sending output"
        else:
            message = reason
        return UpstreamError(message, kind="timeout", status=504)

    def _failed(self, adapter: Adapter, error: UpstreamError) -> None:
        self._metrics.upstream_errors.labels(adapter.id, error.kind).inc()
        if error.marks_down:
            self._availability.mark_down(adapter, error.message)
