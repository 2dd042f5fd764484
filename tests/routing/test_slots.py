"""Slots and queues per host, and where a request starts (pollex.routing.capacity)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from pollex.adapters import Backend, ChatRequest, Finish, ProbeResult
from pollex.errors import QueueFull, UpstreamError
from pollex.metrics import Metrics
from pollex.routing.availability import Availability
from pollex.routing.capacity import Capacity, Slots


class Host:
    """Just enough of an adapter for the capacity: identity and a probe."""

    provider = "llamacpp"
    first_token_timeout_s = 1.0

    def __init__(self, id: str, host: str = "h:1") -> None:
        self.id = id
        self.host = host
        self.name = f"Host ({id}@{host})"
        self.result = ProbeResult(True)

    async def probe(self) -> ProbeResult:
        return self.result

    async def stream(self, chat: ChatRequest, finish: Finish) -> AsyncGenerator[str, None]:
        yield "unused"


def capacity(
    *backends: Backend, max_queue: int = 16, max_queue_wait_s: float = 10.0
) -> tuple[Capacity, Availability, Metrics]:
    metrics = Metrics()
    hosts = [h for b in backends for h in b.hosts]
    availability = Availability(
        hosts, metrics, interval_s=1.0, interval_down_s=1.0, probe_timeout_s=1.0
    )
    made = Capacity(
        backends, availability, metrics, max_queue=max_queue, max_queue_wait_s=max_queue_wait_s
    )
    return made, availability, metrics


def one_slot(host: Host) -> Slots:
    return Slots(host, lambda: 1, max_queue=4)


async def test_free_slot_is_taken_at_once_and_given_back() -> None:
    slots = one_slot(Host("a"))
    assert slots.free() and slots.expected_wait(0) == 0.0
    await slots.acquire(None)
    assert (slots.busy, slots.free()) == (1, False)
    slots.release(2.0)
    assert (slots.busy, slots.mean_service_s) == (0, 2.0)


async def test_waiters_are_served_in_order_and_told_their_place() -> None:
    slots = one_slot(Host("a"))
    slots.mean_service_s = 10.0
    await slots.acquire(None)
    told: dict[str, list[tuple[int, float | None]]] = {"b": [], "c": [], "d": []}
    served: list[str] = []

    async def wait(name: str) -> None:
        async def on_position(position: int, wait_s: float | None) -> None:
            told[name].append((position, wait_s))

        await slots.acquire(on_position)
        served.append(name)

    tasks = [asyncio.create_task(wait(n)) for n in "bcd"]
    await asyncio.sleep(0)
    assert slots.queued == 3
    for _ in range(3):
        slots.release(10.0)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert served == ["b", "c", "d"]
    assert told["b"] == [(1, 10.0)]
    assert told["c"] == [(2, 20.0), (1, 10.0)]
    assert told["d"] == [(3, 30.0), (2, 20.0), (1, 10.0)]
    assert slots.busy == 1  # d still holds it


async def test_a_waiter_that_leaves_gives_up_its_place_at_once() -> None:
    slots = one_slot(Host("a"))
    await slots.acquire(None)
    places: list[int] = []

    async def on_position(position: int, wait_s: float | None) -> None:
        places.append(position)

    first = asyncio.create_task(slots.acquire(None))
    second = asyncio.create_task(slots.acquire(on_position))
    await asyncio.sleep(0)
    assert slots.queued == 2
    first.cancel()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert slots.queued == 1
    assert places == [2, 1]
    slots.release(None)
    await second
    assert slots.busy == 1 and slots.queued == 0


async def test_a_waiter_cancelled_as_it_is_handed_the_slot_passes_it_on() -> None:
    slots = one_slot(Host("a"))
    await slots.acquire(None)
    first = asyncio.create_task(slots.acquire(None))
    second = asyncio.create_task(slots.acquire(None))
    await asyncio.sleep(0)
    slots.release(None)  # handed to `first`, which has not run yet
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    await second
    assert slots.busy == 1 and slots.queued == 0


async def test_a_host_going_down_sends_its_waiters_on() -> None:
    slots = one_slot(Host("a"))
    await slots.acquire(None)
    waiter = asyncio.create_task(slots.acquire(None))
    await asyncio.sleep(0)
    slots.fail_waiting(UpstreamError("down", kind="connect"))
    with pytest.raises(UpstreamError, match="down"):
        await waiter
    assert slots.queued == 0 and slots.busy == 1


async def test_a_larger_limit_lets_waiters_in() -> None:
    limit = [1]
    slots = Slots(Host("a"), lambda: limit[0], max_queue=4)
    await slots.acquire(None)
    waiter = asyncio.create_task(slots.acquire(None))
    await asyncio.sleep(0)
    limit[0] = 2
    slots.refill()
    await waiter
    assert slots.busy == 2


async def test_mean_service_time_follows_recent_polishes() -> None:
    slots = one_slot(Host("a"))
    for seconds in (10.0, 20.0):
        await slots.acquire(None)
        slots.release(seconds)
    assert slots.mean_service_s == pytest.approx(13.0)  # 10 + 0.3 * (20 - 10)
    await slots.acquire(None)
    slots.release(None)  # a failure says nothing about how long a polish takes
    assert slots.mean_service_s == pytest.approx(13.0)


async def test_unlimited_slots_never_queue() -> None:
    slots = Slots(Host("a"), lambda: None, max_queue=0)
    for _ in range(50):
        await slots.acquire(None)
    assert (slots.busy, slots.queued, slots.full()) == (50, 0, False)


# --- where a request starts ---------------------------------------------------------------


async def test_the_first_backend_with_a_free_slot_serves() -> None:
    gpu, cpu = Host("gpu"), Host("cpu")
    made, _, _ = capacity(Backend((gpu,)), Backend((cpu,)))
    assert made.place([Backend((gpu,)), Backend((cpu,))])[0] == 0


async def test_busy_primary_with_a_known_short_wait_is_waited_for() -> None:
    gpu, cpu = Host("gpu"), Host("cpu")
    backends = [Backend((gpu,)), Backend((cpu,))]
    made, _, _ = capacity(*backends, max_queue_wait_s=10.0)
    await made.of(gpu).acquire(None)
    made.of(gpu).mean_service_s = 8.0
    assert made.place(backends) == (0, gpu)
    made.of(gpu).mean_service_s = 12.0
    assert made.place(backends) == (1, cpu)  # spill: the wait is longer than allowed


async def test_no_history_means_spill_when_busy() -> None:
    gpu, cpu = Host("gpu"), Host("cpu")
    backends = [Backend((gpu,)), Backend((cpu,))]
    made, _, _ = capacity(*backends)
    await made.of(gpu).acquire(None)
    assert made.place(backends) == (1, cpu)


async def test_zero_wait_spills_whenever_the_primary_has_no_free_slot() -> None:
    gpu, cpu = Host("gpu"), Host("cpu")
    backends = [Backend((gpu,)), Backend((cpu,))]
    made, _, _ = capacity(*backends, max_queue_wait_s=0)
    made.of(gpu).mean_service_s = 0.5
    await made.of(gpu).acquire(None)
    assert made.place(backends) == (1, cpu)


async def test_when_none_can_start_soon_the_shortest_wait_wins() -> None:
    gpu, cpu = Host("gpu"), Host("cpu")
    backends = [Backend((gpu,)), Backend((cpu,))]
    made, _, _ = capacity(*backends, max_queue_wait_s=1.0)
    for host, mean in ((gpu, 30.0), (cpu, 50.0)):
        await made.of(host).acquire(None)
        made.of(host).mean_service_s = mean
    assert made.place(backends) == (0, gpu)
    made.of(gpu).mean_service_s = 60.0
    assert made.place(backends) == (1, cpu)


async def test_full_queues_everywhere_is_queue_full_with_a_retry_hint() -> None:
    gpu = Host("gpu")
    made, _, _ = capacity(Backend((gpu,)), max_queue=1)
    slots = made.of(gpu)
    slots.mean_service_s = 7.0
    await slots.acquire(None)
    waiter = asyncio.create_task(slots.acquire(None))
    await asyncio.sleep(0)
    with pytest.raises(QueueFull) as info:
        made.place([Backend((gpu,))])
    assert info.value.status == 503
    assert info.value.retry_after_s == 14.0
    waiter.cancel()


async def test_the_host_that_starts_soonest_serves_and_down_hosts_are_passed_over() -> None:
    one, two = Host("gpu", "nano1:8080"), Host("gpu", "nano2:8080")
    backend = Backend((one, two))
    made, availability, _ = capacity(backend)
    assert made.place([backend]) == (0, one)
    await made.of(one).acquire(None)
    assert made.place([backend]) == (0, two)
    availability.mark_down(two, "gone")
    made.of(one).mean_service_s = 5.0
    assert made.place([backend]) == (0, one)  # waits on the live host


async def test_gauges_follow_slots_and_queue() -> None:
    gpu = Host("gpu")
    made, _, metrics = capacity(Backend((gpu,)))

    def value(name: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"adapter": "gpu", "upstream": "h:1"})

    assert (value("pollex_busy_slots"), value("pollex_queued_requests")) == (0, 0)
    await made.of(gpu).acquire(None)
    waiter = asyncio.create_task(made.of(gpu).acquire(None))
    await asyncio.sleep(0)
    assert (value("pollex_busy_slots"), value("pollex_queued_requests")) == (1, 1)
    made.of(gpu).release(1.0)
    await waiter
    assert (value("pollex_busy_slots"), value("pollex_queued_requests")) == (1, 0)


async def test_learned_slots_apply_unless_set() -> None:
    learned, configured = Host("gpu", "a:1"), Host("cpu", "b:1")
    learned.result = ProbeResult(True, slots=3, context=4096)
    configured.result = ProbeResult(True, slots=3)
    made, availability, _ = capacity(
        Backend((learned,)), Backend((configured,), slots_setting=1, context_setting=2048)
    )
    assert made.of(learned).limit == 1  # the default, until the host says
    await availability.probe(learned)
    await availability.probe(configured)
    assert (made.of(learned).limit, made.context(learned)) == (3, 4096)
    assert (made.of(configured).limit, made.context(configured)) == (1, 2048)
