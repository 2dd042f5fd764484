"""Which hosts can take a request, kept fresh by background probes (docs/architecture.md).

Requests and `/api/health` only read this cache; nothing on the request path waits on a
probe. Failed requests mark a host down at once (passive health), and whoever waits on
that host (for its first token, in its queue, or on a stream gone silent) is told, so a
hung upstream is abandoned within one probe window instead of a whole timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

import structlog

from pollex.adapters import Adapter, ProbeResult
from pollex.metrics import Metrics

log = structlog.get_logger("pollex.availability")

DownListener = Callable[[str], None]
ProbedListener = Callable[[Adapter], None]


class Producing(Protocol):
    """A stream on a host: when it last received a chunk (the event loop's clock)."""

    last_progress: float | None


@dataclass
class HostState:
    available: bool | None = None
    reason: str | None = "not probed yet"
    checked_at: datetime | None = None
    latency_ms: int | None = None
    # What the host said of itself at its last good probe.
    slots: int | None = None
    context: int | None = None
    # Streams on this host that have produced text (their watchdogs).
    streams: set[Producing] = field(default_factory=set)
    listeners: set[DownListener] = field(default_factory=set)

    @property
    def routable(self) -> bool:
        """Not known to be down; a host not probed yet is routable."""
        return self.available is not False

    def producing_since(self, moment: float) -> bool:
        return any((s.last_progress or 0.0) >= moment for s in self.streams)

    def as_health(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"available": self.available is not False}
        if self.reason and not self.available:
            entry["reason"] = self.reason
        if self.checked_at is not None:
            entry["checked_at"] = self.checked_at.isoformat(timespec="seconds").replace(
                "+00:00", "Z"
            )
        if self.latency_ms is not None:
            entry["latency_ms"] = self.latency_ms
        return entry


class Availability:
    def __init__(
        self,
        hosts: Sequence[Adapter],
        metrics: Metrics,
        *,
        interval_s: float,
        interval_down_s: float,
        probe_timeout_s: float,
    ) -> None:
        self._hosts = list(hosts)
        self._metrics = metrics
        self._interval = interval_s
        self._interval_down = interval_down_s
        self._probe_timeout = probe_timeout_s
        self._states = {h: HostState() for h in hosts}
        self._probed: list[ProbedListener] = []
        for host in hosts:
            self._gauge(host).set(1)

    def state(self, host: Adapter) -> HostState:
        return self._states[host]

    def is_routable(self, host: Adapter) -> bool:
        return self._states[host].routable

    def mark_down(self, host: Adapter, reason: str) -> None:
        self._set(host, ProbeResult(False, reason), latency_ms=None)

    def mark_up(self, host: Adapter) -> None:
        if self._states[host].available is not True:
            self._set(host, ProbeResult(True), latency_ms=None)

    def on_down(self, host: Adapter, listener: DownListener) -> Callable[[], None]:
        """Call `listener(reason)` if the host goes down; returns the way to stop."""
        listeners = self._states[host].listeners
        listeners.add(listener)
        return lambda: listeners.discard(listener)

    def on_probed(self, listener: ProbedListener) -> None:
        """Call `listener(host)` after every probe that found the host up."""
        self._probed.append(listener)

    def streaming(self, host: Adapter, stream: Producing, on: bool) -> None:
        """A stream on this host started (or stopped) producing text."""
        streams = self._states[host].streams
        if on:
            streams.add(stream)
        else:
            streams.discard(stream)

    async def run(self) -> None:
        """Probe every host concurrently, for ever (cancelled at shutdown)."""
        await asyncio.gather(*(self._probe_loop(h) for h in self._hosts))

    async def _probe_loop(self, host: Adapter) -> None:
        while True:
            suspect = await self.probe(host)
            state = self._states[host]
            soon = suspect or not state.available
            await asyncio.sleep(self._interval_down if soon else self._interval)

    async def probe(self, host: Adapter) -> bool:
        """Probe once and record the result. Returns True when the probe timed out but the
        host was let off because it is producing text: it is probed again soon.

        A busy GPU is not a dead one: a timeout while some stream on the host received a
        chunk during the probe is ignored. A timeout while all its streams are silent marks
        it down at once, and the silent streams end (a frozen server, a GPU hang).
        """
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        started_loop = loop.time()
        try:
            result = await self._bounded_probe(host)
        except Exception as exc:  # a broken probe must not end the probe loop
            log.exception("probe_failed", adapter=host.id, host=host.host)
            result = ProbeResult(False, f"probe failed: {type(exc).__name__}")
        if result is None:
            if self._states[host].producing_since(started_loop):
                return True
            result = ProbeResult(False, "probe timed out")
        self._set(host, result, latency_ms=round((time.perf_counter() - started) * 1000))
        if result.available:
            for listener in self._probed:
                listener(host)
        return False

    async def _bounded_probe(self, host: Adapter) -> ProbeResult | None:
        """`host.probe()` within the probe timeout; None when it timed out.

        Not `asyncio.wait_for`: before Python 3.12 it swallows a cancellation that lands
        just as the probe completes, and the probe loop would then outlive shutdown.
        """
        probe = asyncio.create_task(host.probe())
        try:
            done, _ = await asyncio.wait((probe,), timeout=self._probe_timeout)
        finally:
            if not probe.done():  # timed out, or we were cancelled: so is the probe
                probe.cancel()
                await asyncio.wait((probe,))
            if not probe.cancelled():
                probe.exception()  # mark it retrieved; `result()` below still raises it
        return probe.result() if done else None

    def _set(self, host: Adapter, result: ProbeResult, latency_ms: int | None) -> None:
        state = self._states[host]
        changed = state.available != result.available
        state.available = result.available
        state.reason = result.reason
        state.checked_at = datetime.now(timezone.utc)
        if latency_ms is not None:
            state.latency_ms = latency_ms
        if result.slots is not None:
            state.slots = result.slots
        if result.context is not None:
            state.context = result.context
        if not changed:
            return
        self._gauge(host).set(1 if result.available else 0)
        if result.available:
            log.info("adapter_up", adapter=host.id, host=host.host)
        else:
            log.warning("adapter_down", adapter=host.id, host=host.host, reason=result.reason)
            for listener in list(state.listeners):
                listener(result.reason or "down")

    def _gauge(self, host: Adapter) -> Any:
        return self._metrics.adapter_available.labels(
            adapter=host.id, provider=host.provider, upstream=host.host
        )
