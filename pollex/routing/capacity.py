"""Capacity: how many requests each host serves at once, who waits for it, and where a new
request should start (docs/architecture.md, "Capacity").

Each host has slots and one FIFO queue bounded by `max_queue`. pollex never has more
requests in flight on a host than it has slots: a request that finds none free waits here,
where pollex knows who is waiting and can tell each one its place, instead of inside the
upstream, where nobody can. Each host keeps the mean service time of its recent polishes
(an exponentially weighted mean), from which a wait is estimated.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from pollex.adapters import Adapter, Backend
from pollex.errors import QueueFull, UpstreamError
from pollex.metrics import Metrics
from pollex.routing.availability import Availability

# Weight of the newest polish in a host's mean service time: the last few polishes matter.
SERVICE_WEIGHT = 0.3

PositionListener = Callable[[int, float | None], Awaitable[None]]


class _Waiter:
    __slots__ = ("error", "granted", "signal")

    def __init__(self) -> None:
        self.signal: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.granted = False
        self.error: UpstreamError | None = None

    def wake(self) -> None:
        if not self.signal.done():
            self.signal.set_result(None)


class Slots:
    """One host's slots, its queue, and its recent mean service time."""

    def __init__(self, host: Adapter, limit: Callable[[], int | None], max_queue: int) -> None:
        self.host = host
        self._limit = limit
        self.max_queue = max_queue
        self.busy = 0
        self._queue: deque[_Waiter] = deque()
        self.mean_service_s: float | None = None
        self.changed: Callable[[Slots], None] = lambda slots: None

    @property
    def limit(self) -> int | None:
        """How many requests the host serves at once; None: no limit."""
        return self._limit()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def free(self) -> bool:
        limit = self.limit
        return not self._queue and (limit is None or self.busy < limit)

    def full(self) -> bool:
        return not self.free() and len(self._queue) >= self.max_queue

    def expected_wait(self, ahead: int) -> float | None:
        """Seconds until a request with `ahead` requests queued before it gets a slot; None
        when no polish has been timed here yet."""
        if ahead == 0 and self.free():
            return 0.0
        if self.mean_service_s is None:
            return None
        return self.mean_service_s * (ahead // (self.limit or 1) + 1)

    def wait_for_new(self) -> float | None:
        return self.expected_wait(len(self._queue))

    async def acquire(self, on_position: PositionListener | None) -> None:
        """Take a slot, waiting in line for one if none is free. `on_position(n, wait)` is
        told the place in line (1 = next) when the request joins and whenever it moves.
        A request that leaves the line (cancelled) gives up its place at once."""
        if self.free():
            self.busy += 1
            self.changed(self)
            return
        waiter = _Waiter()
        self._queue.append(waiter)
        self.changed(self)
        told = 0
        try:
            while not waiter.granted:
                if waiter.error is not None:
                    raise waiter.error
                position = self._queue.index(waiter) + 1
                if on_position is not None and position != told:
                    told = position
                    await on_position(position, self.expected_wait(position - 1))
                if waiter.granted or waiter.error is not None:
                    continue
                await waiter.signal
                waiter.signal = asyncio.get_running_loop().create_future()
        except BaseException:
            if waiter.granted:
                self.release(None)  # handed a slot while leaving: pass it on
            else:
                self._leave(waiter)
            raise

    def release(self, service_s: float | None) -> None:
        """A request is done with its slot; `service_s` is how long a successful polish held
        it. The slot goes to the first in line, if any."""
        if service_s is not None:
            mean = self.mean_service_s
            self.mean_service_s = (
                service_s if mean is None else mean + SERVICE_WEIGHT * (service_s - mean)
            )
        self.busy -= 1
        self.refill()

    def refill(self) -> None:
        """Hand free slots to those in line (after a release, or when the limit grew)."""
        limit = self.limit
        moved = False
        while self._queue and (limit is None or self.busy < limit):
            waiter = self._queue.popleft()
            waiter.granted = True
            waiter.wake()
            self.busy += 1
            moved = True
        if moved:
            for waiter in self._queue:
                waiter.wake()
        self.changed(self)

    def fail_waiting(self, error: UpstreamError) -> None:
        """The host went down: everyone in line moves on (to the next backend)."""
        for waiter in self._queue:
            waiter.error = error
            waiter.wake()

    def _leave(self, waiter: _Waiter) -> None:
        if waiter in self._queue:
            self._queue.remove(waiter)
            for other in self._queue:
                other.wake()
            self.changed(self)


class Capacity:
    """The slots of every host, and where a new request should start."""

    def __init__(
        self,
        backends: Sequence[Backend],
        availability: Availability,
        metrics: Metrics,
        *,
        max_queue: int,
        max_queue_wait_s: float,
    ) -> None:
        self._availability = availability
        self._metrics = metrics
        self._max_wait = max_queue_wait_s
        self._slots: dict[Adapter, Slots] = {}
        self._context: dict[Adapter, int | None] = {}
        for backend in backends:
            for host in backend.hosts:
                self._context[host] = backend.context_setting
                slots = Slots(host, _limit_of(backend, host, availability), max_queue)
                slots.changed = self._publish
                self._slots[host] = slots
                self._publish(slots)
                availability.on_down(host, _fail_waiting(slots))
        availability.on_probed(self._probed)

    def of(self, host: Adapter) -> Slots:
        return self._slots[host]

    def context(self, host: Adapter) -> int | None:
        """A host's context per slot in tokens: the setting, else what the host said."""
        setting = self._context[host]
        return setting if setting is not None else self._availability.state(host).context

    def place(self, candidates: Sequence[Backend]) -> tuple[int, Adapter]:
        """Where a request starts: the index of its backend among `candidates`, and the host.

        The first backend (in chain order) with a host that can start it within
        `max_queue_wait_s`; if none can, the host where the expected wait is shortest
        (unknown waits count as longest, ties go to chain order). Hosts cached as down
        are passed over unless all of a backend's hosts are. Raises `QueueFull` when
        every candidate's queue is full.
        """
        best: tuple[float, int, Adapter] | None = None
        for index, backend in enumerate(candidates):
            for host in self._hosts_to_try(backend):
                slots = self._slots[host]
                if slots.full():
                    continue
                wait = slots.wait_for_new()
                if wait is not None and wait <= self._max_wait:
                    return index, host
                rank = float("inf") if wait is None else wait
                if best is None or rank < best[0]:
                    best = (rank, index, host)
        if best is None:
            waits = [s.expected_wait(s.queued) for s in self._slots.values()]
            known = [w for w in waits if w is not None]
            raise QueueFull(min(known) if known else None)
        return best[1], best[2]

    def _hosts_to_try(self, backend: Backend) -> list[Adapter]:
        live = [h for h in backend.hosts if self._availability.is_routable(h)]
        return live or list(backend.hosts)

    def _probed(self, host: Adapter) -> None:
        self._slots[host].refill()  # the host may have told us it has more slots

    def _publish(self, slots: Slots) -> None:
        labels = (slots.host.id, slots.host.host)
        self._metrics.busy_slots.labels(*labels).set(slots.busy)
        self._metrics.queued_requests.labels(*labels).set(slots.queued)


def _limit_of(
    backend: Backend, host: Adapter, availability: Availability
) -> Callable[[], int | None]:
    """A host's slots: the setting if there is one, else what the host said of itself
    (llama-server's `total_slots`), else the provider's default."""
    if backend.slots_setting is not None:
        setting = backend.slots_setting
        return lambda: setting
    state = availability.state(host)
    default = backend.slots_default
    return lambda: state.slots if state.slots is not None else default


def _fail_waiting(slots: Slots) -> Callable[[str], None]:
    def fail(reason: str) -> None:
        slots.fail_waiting(
            UpstreamError(
                f"{slots.host.name} went down while the request waited",
                kind="connect",
                marks_down=False,
            )
        )

    return fail
