"""The availability cache: probes, passive mark-down, listeners, busy-is-not-dead."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, MutableMapping
from typing import Any

import pytest
import structlog

from pollex.adapters import ChatRequest, Finish, ProbeResult
from pollex.metrics import Metrics
from pollex.routing.availability import Availability

PROBE_TIMEOUT = 0.05


class FakeAdapter:
    """Just enough of the Adapter protocol for the cache: identity, host and a probe."""

    first_token_timeout_s = 1.0

    def __init__(self, id: str, provider: str = "llamacpp", host: str | None = None) -> None:
        self.id = id
        self.provider = provider
        self.name = f"Fake ({id})"
        self.host = host or f"{id}.test:8080"
        self.result = ProbeResult(True)
        self.hang = False
        self.error: Exception | None = None
        self.probes = 0

    async def probe(self) -> ProbeResult:
        self.probes += 1
        if self.hang:
            await asyncio.Event().wait()
        if self.error is not None:
            raise self.error
        return self.result

    def stream(self, chat: ChatRequest, finish: Finish) -> AsyncGenerator[str, None]:
        raise NotImplementedError("the cache never streams")


def make(
    *adapters: FakeAdapter,
    interval_s: float = 1.0,
    interval_down_s: float = 1.0,
    probe_timeout_s: float = PROBE_TIMEOUT,
) -> tuple[Availability, Metrics]:
    metrics = Metrics()
    availability = Availability(
        list(adapters),
        metrics,
        interval_s=interval_s,
        interval_down_s=interval_down_s,
        probe_timeout_s=probe_timeout_s,
    )
    return availability, metrics


def gauge(metrics: Metrics, adapter: FakeAdapter) -> float | None:
    return metrics.registry.get_sample_value(
        "pollex_adapter_available",
        {"adapter": adapter.id, "provider": adapter.provider, "upstream": adapter.host},
    )


class FakeStream:
    """A stream on a host, as the cache sees it: when it last received a chunk."""

    def __init__(self) -> None:
        self.last_progress: float | None = None


@contextlib.asynccontextmanager
async def producing(stream: FakeStream, every_s: float = 0.005) -> AsyncIterator[None]:
    """`stream` receives a chunk every `every_s` while the block runs (a busy GPU)."""
    loop = asyncio.get_running_loop()

    async def tick() -> None:
        while True:
            stream.last_progress = loop.time()
            await asyncio.sleep(every_s)

    task = asyncio.create_task(tick())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def running(availability: Availability) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(availability.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def transitions(logs: list[MutableMapping[str, Any]]) -> list[tuple[str, str]]:
    return [
        (entry["event"], entry["adapter"])
        for entry in logs
        if entry["event"] in ("adapter_up", "adapter_down")
    ]


async def test_not_probed_yet_is_routable() -> None:
    adapter = FakeAdapter("gpu")
    availability, metrics = make(adapter)
    state = availability.state(adapter)
    assert state.available is None
    assert state.reason == "not probed yet"
    assert state.checked_at is None
    assert availability.is_routable(adapter)
    assert state.as_health() == {"available": True, "reason": "not probed yet"}
    assert gauge(metrics, adapter) == 1
    assert adapter.probes == 0  # constructing the cache probes nothing


async def test_probe_up() -> None:
    adapter = FakeAdapter("gpu")
    availability, _ = make(adapter)
    assert await availability.probe(adapter) is False  # nothing to look at again soon
    state = availability.state(adapter)
    assert state.available is True
    assert state.reason is None
    assert state.checked_at is not None
    assert state.latency_ms is not None and state.latency_ms >= 0
    health = state.as_health()
    assert health["available"] is True
    assert "reason" not in health
    assert health["checked_at"].endswith("Z")


async def test_probe_down_with_reason() -> None:
    adapter = FakeAdapter("gpu")
    adapter.result = ProbeResult(False, "llama-server loading model")
    availability, _ = make(adapter)
    await availability.probe(adapter)
    state = availability.state(adapter)
    assert state.available is False
    assert state.reason == "llama-server loading model"
    assert not availability.is_routable(adapter)
    health = state.as_health()
    assert health["available"] is False
    assert health["reason"] == "llama-server loading model"


async def test_probe_that_times_out_marks_down() -> None:
    adapter = FakeAdapter("gpu")
    adapter.hang = True
    availability, metrics = make(adapter)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await availability.probe(adapter) is False
    assert loop.time() - start < 0.5
    state = availability.state(adapter)
    assert state.available is False
    assert state.reason == "probe timed out"
    assert gauge(metrics, adapter) == 0


async def test_probe_timeout_while_streaming_keeps_adapter_up() -> None:
    """A busy GPU is not a dead one: a probe timeout while a stream on the host receives
    chunks is let off (and the host is to be probed again soon)."""
    adapter = FakeAdapter("gpu")
    availability, metrics = make(adapter)
    await availability.probe(adapter)
    assert availability.state(adapter).available is True

    adapter.hang = True
    stream = FakeStream()
    availability.streaming(adapter, stream, True)
    assert availability.state(adapter).streams == {stream}
    async with producing(stream):
        assert await availability.probe(adapter) is True
    assert availability.state(adapter).available is True
    assert availability.is_routable(adapter)
    assert gauge(metrics, adapter) == 1

    availability.streaming(adapter, stream, False)  # the stream ended; now a timeout means down
    assert await availability.probe(adapter) is False
    assert availability.state(adapter).available is False
    assert availability.state(adapter).reason == "probe timed out"
    assert gauge(metrics, adapter) == 0


async def test_probe_timeout_while_streams_are_silent_marks_down() -> None:
    """A frozen server: its streams are still open but none received a chunk while the
    probe waited, so the timeout is believed, and whoever waits on the host is told."""
    adapter = FakeAdapter("gpu")
    availability, metrics = make(adapter)
    await availability.probe(adapter)
    heard: list[str] = []
    availability.on_down(adapter, heard.append)

    stream = FakeStream()
    availability.streaming(adapter, stream, True)
    async with producing(stream):
        await asyncio.sleep(0.02)  # it produced, but before the probe below started
    adapter.hang = True
    assert await availability.probe(adapter) is False
    assert availability.state(adapter).available is False
    assert availability.state(adapter).reason == "probe timed out"
    assert heard == ["probe timed out"]
    assert gauge(metrics, adapter) == 0


async def test_a_stream_on_another_host_does_not_excuse_a_timeout() -> None:
    """Busy-is-not-dead is per host: a stream producing on one does not keep another up."""
    adapter = FakeAdapter("gpu", host="nano-1:8080")
    other = FakeAdapter("gpu", host="nano-2:8080")
    availability, metrics = make(adapter, other)
    stream = FakeStream()
    availability.streaming(other, stream, True)
    adapter.hang = True
    async with producing(stream):
        assert await availability.probe(adapter) is False
    assert availability.state(adapter).available is False
    assert availability.is_routable(other)
    assert (gauge(metrics, adapter), gauge(metrics, other)) == (0, 1)


async def test_busy_does_not_hide_a_real_failure() -> None:
    """Only a timeout is excused by streaming; a probe that says down is believed."""
    adapter = FakeAdapter("gpu")
    availability, _ = make(adapter)
    stream = FakeStream()
    availability.streaming(adapter, stream, True)
    adapter.result = ProbeResult(False, "llama-server unreachable")
    async with producing(stream):
        assert await availability.probe(adapter) is False
    assert availability.state(adapter).available is False
    assert availability.state(adapter).reason == "llama-server unreachable"


async def test_mark_down_at_once_and_tells_listeners() -> None:
    adapter = FakeAdapter("gpu")
    other = FakeAdapter("cpu", provider="ollama")
    availability, metrics = make(adapter, other)
    heard: list[str] = []
    heard_other: list[str] = []
    availability.on_down(adapter, heard.append)
    availability.on_down(other, heard_other.append)

    availability.mark_down(adapter, "llama-server unreachable")
    assert not availability.is_routable(adapter)
    assert availability.state(adapter).reason == "llama-server unreachable"
    assert heard == ["llama-server unreachable"]
    assert heard_other == []  # only the listeners of that host
    assert gauge(metrics, adapter) == 0
    assert gauge(metrics, other) == 1

    # Already down: no change, listeners are not called again.
    availability.mark_down(adapter, "still unreachable")
    assert heard == ["llama-server unreachable"]


async def test_stop_listening() -> None:
    adapter = FakeAdapter("gpu")
    availability, _ = make(adapter)
    heard: list[str] = []
    kept: list[str] = []
    stop = availability.on_down(adapter, heard.append)
    availability.on_down(adapter, kept.append)
    stop()
    stop()  # idempotent
    availability.mark_down(adapter, "gone")
    assert heard == []
    assert kept == ["gone"]


async def test_probe_going_down_tells_listeners() -> None:
    adapter = FakeAdapter("gpu")
    availability, _ = make(adapter)
    await availability.probe(adapter)
    heard: list[str] = []
    availability.on_down(adapter, heard.append)
    adapter.hang = True
    await availability.probe(adapter)
    assert heard == ["probe timed out"]


async def test_mark_up() -> None:
    adapter = FakeAdapter("gpu")
    availability, metrics = make(adapter)
    availability.mark_down(adapter, "llama-server unreachable")
    availability.mark_up(adapter)
    assert availability.state(adapter).available is True
    assert availability.state(adapter).reason is None
    assert gauge(metrics, adapter) == 1


async def test_gauge_follows_state_changes() -> None:
    adapter = FakeAdapter("gpu")
    other = FakeAdapter("cpu", provider="ollama")
    availability, metrics = make(adapter, other)
    seen = []
    for result in (
        ProbeResult(True),
        ProbeResult(False, "llama-server unreachable"),
        ProbeResult(False, "llama-server unreachable"),
        ProbeResult(True),
    ):
        adapter.result = result
        await availability.probe(adapter)
        seen.append(gauge(metrics, adapter))
    assert seen == [1, 0, 0, 1]
    assert gauge(metrics, other) == 1


async def test_run_probes_down_adapters_faster() -> None:
    up = FakeAdapter("gpu")
    down = FakeAdapter("cpu", provider="ollama")
    down.result = ProbeResult(False, "ollama unreachable")
    availability, _ = make(up, down, interval_s=0.5, interval_down_s=0.01)
    async with running(availability):
        await asyncio.sleep(0.12)
    assert up.probes == 1  # the first round at start-up, the next one is 0.5 s away
    assert down.probes >= 4
    assert availability.state(up).available is True
    assert availability.state(down).available is False


async def test_run_probes_a_busy_host_again_soon() -> None:
    """A host let off a probe timeout because it is producing is probed again after the
    short interval: if it has frozen meanwhile, that is seen within one short interval."""
    adapter = FakeAdapter("gpu")
    adapter.hang = True
    availability, _ = make(adapter, interval_s=1.0, interval_down_s=0.01, probe_timeout_s=0.02)
    stream = FakeStream()
    availability.streaming(adapter, stream, True)
    async with producing(stream), running(availability):
        await asyncio.sleep(0.15)
        assert adapter.probes >= 3
        assert availability.state(adapter).available is None  # let off each time
    async with running(availability):
        await asyncio.sleep(0.1)
    assert availability.state(adapter).available is False


async def test_run_first_round_starts_at_once() -> None:
    adapters = [FakeAdapter("a"), FakeAdapter("b", provider="ollama")]
    availability, _ = make(*adapters, interval_s=1.0)
    async with running(availability):
        for _ in range(50):
            if all(a.probes for a in adapters):
                break
            await asyncio.sleep(0.005)
    assert [a.probes for a in adapters] == [1, 1]


async def test_run_sees_recovery_within_the_down_interval() -> None:
    adapter = FakeAdapter("gpu")
    adapter.result = ProbeResult(False, "llama-server unreachable")
    availability, _ = make(adapter, interval_s=1.0, interval_down_s=0.01)
    async with running(availability):
        await asyncio.sleep(0.03)
        assert availability.state(adapter).available is False
        adapter.result = ProbeResult(True)
        for _ in range(40):
            if availability.state(adapter).available:
                break
            await asyncio.sleep(0.005)
        assert availability.state(adapter).available is True


async def test_probe_raising_marks_down_and_the_loop_goes_on() -> None:
    adapter = FakeAdapter("gpu")
    adapter.error = RuntimeError("boom")
    availability, metrics = make(adapter, interval_s=0.01, interval_down_s=0.01)
    with structlog.testing.capture_logs() as logs:
        async with running(availability) as task:
            for _ in range(40):
                if adapter.probes >= 3:
                    break
                await asyncio.sleep(0.005)
            assert not task.done()
            state = availability.state(adapter)
            assert state.available is False
            assert state.reason == "probe failed: RuntimeError"  # the class, not its text
            assert gauge(metrics, adapter) == 0
            adapter.error = None  # the probe is fixed: the loop is still there to see it
            for _ in range(40):
                if availability.state(adapter).available:
                    break
                await asyncio.sleep(0.005)
            assert availability.state(adapter).available is True
    assert adapter.probes >= 3
    assert any(entry["event"] == "probe_failed" for entry in logs)


async def test_state_changes_are_logged_once_per_change() -> None:
    adapter = FakeAdapter("gpu")
    availability, _ = make(adapter)
    results = [
        ProbeResult(True),
        ProbeResult(True),
        ProbeResult(True),
        ProbeResult(False, "llama-server unreachable"),
        ProbeResult(False, "llama-server unreachable"),
        ProbeResult(False, "llama-server loading model"),
        ProbeResult(True),
        ProbeResult(True),
    ]
    with structlog.testing.capture_logs() as logs:
        for result in results:
            adapter.result = result
            await availability.probe(adapter)
    assert transitions(logs) == [
        ("adapter_up", "gpu"),
        ("adapter_down", "gpu"),
        ("adapter_up", "gpu"),
    ]
    down = next(entry for entry in logs if entry["event"] == "adapter_down")
    assert down["reason"] == "llama-server unreachable"
    assert down["log_level"] == "warning"


async def test_run_logs_a_steady_state_once() -> None:
    up = FakeAdapter("gpu")
    down = FakeAdapter("cpu", provider="ollama")
    down.result = ProbeResult(False, "ollama unreachable")
    availability, _ = make(up, down, interval_s=0.01, interval_down_s=0.01)
    with structlog.testing.capture_logs() as logs:
        async with running(availability):
            await asyncio.sleep(0.08)
    assert up.probes >= 3 and down.probes >= 3
    assert sorted(transitions(logs)) == [("adapter_down", "cpu"), ("adapter_up", "gpu")]


@pytest.mark.parametrize("count", [1, 2])
async def test_streaming_is_tracked_per_stream(count: int) -> None:
    adapter = FakeAdapter("gpu")
    other = FakeAdapter("gpu", host="nano-2:8080")
    availability, _ = make(adapter, other)
    streams = [FakeStream() for _ in range(count)]
    for stream in streams:
        availability.streaming(adapter, stream, True)
        availability.streaming(adapter, stream, True)  # idempotent
    assert availability.state(adapter).streams == set(streams)
    assert availability.state(other).streams == set()
    for stream in streams:
        availability.streaming(adapter, stream, False)
        availability.streaming(adapter, stream, False)  # idempotent
    assert availability.state(adapter).streams == set()


async def test_cancel_as_a_probe_finishes_ends_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shutdown must not hang when its cancel lands just as a probe completes (the race
    in which asyncio.wait_for before Python 3.12 swallows the cancellation)."""
    adapter = FakeAdapter("gpu")
    availability, _ = make(adapter, interval_s=0.5, interval_down_s=0.5)
    task = asyncio.create_task(availability.run())
    loop = asyncio.get_running_loop()
    original = adapter.probe

    async def probe_then_shutdown() -> ProbeResult:
        loop.call_soon(task.cancel)  # due before the waiter learns the probe is done
        return await original()

    monkeypatch.setattr(adapter, "probe", probe_then_shutdown)
    done, _ = await asyncio.wait({task}, timeout=0.2)
    if not done:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        pytest.fail("the probe loop outlived its cancellation")
    assert task.cancelled()
    assert adapter.probes == 1


async def test_cancel_during_a_hung_probe_ends_the_loop_and_the_probe() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    class Hung(FakeAdapter):
        async def probe(self) -> ProbeResult:
            self.probes += 1
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise
            raise AssertionError("unreachable")

    adapter = Hung("gpu")
    availability, _ = make(adapter, probe_timeout_s=1.0)
    task = asyncio.create_task(availability.run())
    await asyncio.wait_for(started.wait(), 0.5)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.2)
    assert done, "the probe loop outlived its cancellation"
    assert task.cancelled()
    assert cancelled.is_set()
    assert availability.state(adapter).available is None  # a cancelled probe decides nothing
