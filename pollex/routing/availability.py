"""Which adapters can take a request, kept fresh by background probes (design §4).

Requests and `/api/health` only read this cache; nothing on the request path waits on a
probe. Failed requests mark an adapter down at once (passive health), and whoever waits
for that adapter's first token is told, so a hung upstream is abandoned within one probe
window instead of the whole first-token timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import structlog

from pollex.adapters import Adapter, ProbeResult
from pollex.metrics import Metrics

log = structlog.get_logger("pollex.availability")

DownListener = Callable[[str], None]


@dataclass
class AdapterState:
    available: bool | None = None
    reason: str | None = "not probed yet"
    checked_at: datetime | None = None
    latency_ms: int | None = None
    streaming: int = 0
    listeners: set[DownListener] = field(default_factory=set)

    @property
    def routable(self) -> bool:
        """Not known to be down; an adapter not probed yet is routable."""
        return self.available is not False

    def as_health(self, provider: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"available": self.available is not False, "provider": provider}
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
        adapters: Sequence[Adapter],
        metrics: Metrics,
        *,
        interval_s: float,
        interval_down_s: float,
        probe_timeout_s: float,
    ) -> None:
        self._adapters = list(adapters)
        self._metrics = metrics
        self._interval = interval_s
        self._interval_down = interval_down_s
        self._probe_timeout = probe_timeout_s
        self._states = {a.id: AdapterState() for a in adapters}
        for adapter in adapters:
            metrics.adapter_available.labels(adapter=adapter.id, provider=adapter.provider).set(1)

    def state(self, adapter_id: str) -> AdapterState:
        return self._states[adapter_id]

    def is_routable(self, adapter_id: str) -> bool:
        return self._states[adapter_id].routable

    def mark_down(self, adapter: Adapter, reason: str) -> None:
        self._set(adapter, ProbeResult(False, reason), latency_ms=None)

    def mark_up(self, adapter: Adapter) -> None:
        if self._states[adapter.id].available is not True:
            self._set(adapter, ProbeResult(True), latency_ms=None)

    def on_down(self, adapter_id: str, listener: DownListener) -> Callable[[], None]:
        """Call `listener(reason)` if the adapter goes down; returns the way to stop."""
        listeners = self._states[adapter_id].listeners
        listeners.add(listener)
        return lambda: listeners.discard(listener)

    def streaming(self, adapter_id: str, delta: int) -> None:
        """Count streams of this adapter that are producing tokens right now."""
        self._states[adapter_id].streaming += delta

    async def run(self) -> None:
        """Probe every adapter concurrently, for ever (cancelled at shutdown)."""
        await asyncio.gather(*(self._probe_loop(a) for a in self._adapters))

    async def _probe_loop(self, adapter: Adapter) -> None:
        while True:
            await self.probe(adapter)
            state = self._states[adapter.id]
            await asyncio.sleep(self._interval if state.available else self._interval_down)

    async def probe(self, adapter: Adapter) -> None:
        started = time.perf_counter()
        try:
            result = await self._bounded_probe(adapter)
        except Exception as exc:  # a broken probe must not end the probe loop
            log.exception("probe_failed", adapter=adapter.id)
            result = ProbeResult(False, f"probe failed: {exc}")
        if result is None:
            if self._states[adapter.id].streaming:
                # Its GPU is busy answering someone: slow, not dead (design §4).
                return
            result = ProbeResult(False, "probe timed out")
        self._set(adapter, result, latency_ms=round((time.perf_counter() - started) * 1000))

    async def _bounded_probe(self, adapter: Adapter) -> ProbeResult | None:
        """`adapter.probe()` within the probe timeout; None when it timed out.

        Not `asyncio.wait_for`: before Python 3.12 it swallows a cancellation that lands
        just as the probe completes, and the probe loop would then outlive shutdown.
        """
        probe = asyncio.create_task(adapter.probe())
        try:
            done, _ = await asyncio.wait((probe,), timeout=self._probe_timeout)
        finally:
            if not probe.done():  # timed out, or we were cancelled: so is the probe
                probe.cancel()
                await asyncio.wait((probe,))
            if not probe.cancelled():
                probe.exception()  # mark it retrieved; `result()` below still raises it
        return probe.result() if done else None

    def _set(self, adapter: Adapter, result: ProbeResult, latency_ms: int | None) -> None:
        state = self._states[adapter.id]
        changed = state.available != result.available
        state.available = result.available
        state.reason = result.reason
        state.checked_at = datetime.now(timezone.utc)
        if latency_ms is not None:
            state.latency_ms = latency_ms
        if not changed:
            return
        gauge = self._metrics.adapter_available.labels(
            adapter=adapter.id, provider=adapter.provider
        )
        gauge.set(1 if result.available else 0)
        if result.available:
            log.info("adapter_up", adapter=adapter.id)
        else:
            log.warning("adapter_down", adapter=adapter.id, reason=result.reason)
            for listener in list(state.listeners):
                listener(result.reason or "down")
