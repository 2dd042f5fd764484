"""The per-request timer: first token, silence between tokens, whole request, abort."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from pollex.routing.watchdog import Watchdog

LONG = 2.0  # "forever" for a test: any wait this long is cut short by the watchdog or fails


@dataclass
class Outcome:
    expiry: str | None  # what take_expiry() said after a CancelledError; None if not cancelled
    cancelled: bool
    elapsed: float


async def guarded(
    body: Callable[[Watchdog], Awaitable[None]], *, idle_s: float, total_s: float
) -> Outcome:
    """Run `body` in a task of its own guarded by a Watchdog, as a request handler is."""
    loop = asyncio.get_running_loop()

    async def run() -> Outcome:
        watchdog = Watchdog(idle_s=idle_s, total_s=total_s)
        start = loop.time()
        try:
            await body(watchdog)
        except asyncio.CancelledError:
            expiry = watchdog.take_expiry()
            if expiry is None:
                raise
            return Outcome(expiry, True, loop.time() - start)
        finally:
            watchdog.stop()
        return Outcome(None, False, loop.time() - start)

    return await asyncio.wait_for(asyncio.create_task(run()), LONG * 2)


async def test_first_token_expiry_cancels_the_waiting_task() -> None:
    async def body(watchdog: Watchdog) -> None:
        watchdog.begin_attempt(0.03)
        await asyncio.sleep(LONG)

    outcome = await guarded(body, idle_s=LONG, total_s=LONG)
    assert outcome.expiry == "first_token"
    assert 0.025 <= outcome.elapsed < 0.5


async def test_progress_keeps_idle_from_firing() -> None:
    """Chunks closer together than idle_s never trip it, however long the stream runs."""
    idle = 0.06
    chunks = 0

    async def body(watchdog: Watchdog) -> None:
        nonlocal chunks
        watchdog.begin_attempt(idle)
        for _ in range(25):
            await asyncio.sleep(0.01)
            watchdog.progress()
            chunks += 1

    outcome = await guarded(body, idle_s=idle, total_s=LONG)
    assert not outcome.cancelled
    assert chunks == 25
    assert outcome.elapsed > 3 * idle  # well past idle_s and the first-token budget


async def test_idle_expiry_after_silence() -> None:
    """Silence is noticed after idle_s, not only once the (longer) first-token budget of
    the attempt has run out."""
    idle = 0.04
    last_chunk = 0.0

    async def body(watchdog: Watchdog) -> None:
        nonlocal last_chunk
        watchdog.begin_attempt(LONG)
        for _ in range(3):
            await asyncio.sleep(0.005)
            watchdog.progress()
        last_chunk = asyncio.get_running_loop().time()
        await asyncio.sleep(LONG)  # the upstream goes silent

    start = asyncio.get_running_loop().time()
    outcome = await guarded(body, idle_s=idle, total_s=LONG)
    assert outcome.expiry == "idle"
    silence = start + outcome.elapsed - last_chunk
    assert idle * 0.9 <= silence < 0.5


async def test_total_deadline_wins_over_first_token() -> None:
    async def body(watchdog: Watchdog) -> None:
        watchdog.begin_attempt(LONG)
        await asyncio.sleep(LONG)

    outcome = await guarded(body, idle_s=LONG, total_s=0.03)
    assert outcome.expiry == "total"
    assert outcome.elapsed < 0.5


async def test_total_deadline_wins_over_a_steady_stream() -> None:
    async def body(watchdog: Watchdog) -> None:
        watchdog.begin_attempt(0.05)
        while True:
            await asyncio.sleep(0.005)
            watchdog.progress()

    outcome = await guarded(body, idle_s=0.05, total_s=0.1)
    assert outcome.expiry == "total"
    assert 0.09 <= outcome.elapsed < 0.6


async def test_total_deadline_spans_attempts() -> None:
    """A failover starts a new first-token budget, but not a new total budget."""
    first: str | None = None

    async def body(watchdog: Watchdog) -> None:
        nonlocal first
        watchdog.begin_attempt(0.02)
        try:
            await asyncio.sleep(LONG)
        except asyncio.CancelledError:
            first = watchdog.take_expiry()
            if first is None:
                raise
        watchdog.begin_attempt(LONG)  # the next adapter in the chain
        await asyncio.sleep(LONG)

    outcome = await guarded(body, idle_s=LONG, total_s=0.08)
    assert first == "first_token"
    assert outcome.expiry == "total"
    assert outcome.elapsed < 0.5


async def test_after_an_expiry_the_task_can_go_on() -> None:
    """take_expiry() consumes the watchdog's cancellation: later awaits are not cancelled."""
    steps: list[str] = []

    async def body(watchdog: Watchdog) -> None:
        watchdog.begin_attempt(0.02)
        try:
            await asyncio.sleep(LONG)
        except asyncio.CancelledError:
            reason = watchdog.take_expiry()
            assert reason == "first_token"
            steps.append(reason)
        watchdog.begin_attempt(0.5)
        for _ in range(3):
            await asyncio.sleep(0.005)
            watchdog.progress()
        steps.append("served")
        if sys.version_info >= (3, 11):
            task = asyncio.current_task()
            assert task is not None
            assert task.cancelling() == 0

    outcome = await guarded(body, idle_s=0.5, total_s=LONG)
    assert not outcome.cancelled
    assert steps == ["first_token", "served"]


async def test_abort_cancels_with_its_reason() -> None:
    async def body(watchdog: Watchdog) -> None:
        watchdog.begin_attempt(LONG)
        asyncio.get_running_loop().call_later(0.01, watchdog.abort, "llama-server unreachable")
        await asyncio.sleep(LONG)

    outcome = await guarded(body, idle_s=LONG, total_s=LONG)
    assert outcome.expiry == "abandoned: llama-server unreachable"
    assert outcome.elapsed < 0.5


async def test_abort_twice_cancels_once() -> None:
    async def body(watchdog: Watchdog) -> None:
        watchdog.begin_attempt(LONG)
        loop = asyncio.get_running_loop()
        loop.call_soon(watchdog.abort, "first")
        loop.call_soon(watchdog.abort, "second")
        await asyncio.sleep(LONG)

    # Were the task cancelled twice, take_expiry() would see a second cancel and say None.
    outcome = await guarded(body, idle_s=LONG, total_s=LONG)
    assert outcome.expiry == "abandoned: first"


async def test_external_cancel_alone_is_not_the_watchdogs() -> None:
    expiries: list[str | None] = []

    async def run() -> None:
        watchdog = Watchdog(idle_s=LONG, total_s=LONG)
        watchdog.begin_attempt(LONG)
        try:
            await asyncio.sleep(LONG)
        except asyncio.CancelledError:
            expiries.append(watchdog.take_expiry())
            raise
        finally:
            watchdog.stop()

    task = asyncio.create_task(run())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert expiries == [None]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Task.uncancel() is 3.11+")
async def test_external_cancel_is_not_swallowed_when_the_watchdog_also_expired() -> None:
    """A client that leaves at the moment the first-token timer fires: both cancel the
    task; the watchdog must not claim the cancellation, or the handler would fail over
    for a client that is gone."""
    expiries: list[str | None] = []
    loop = asyncio.get_running_loop()
    task: asyncio.Task[None] | None = None

    async def run() -> None:
        watchdog = Watchdog(idle_s=LONG, total_s=LONG)
        watchdog.begin_attempt(0.01)
        assert task is not None
        loop.call_later(0.01, task.cancel)  # the client goes away, due with the watchdog
        # Block the loop on purpose: both timers are overdue when it resumes.
        time.sleep(0.03)  # noqa: ASYNC251
        try:
            await asyncio.sleep(LONG)
        except asyncio.CancelledError:
            expiries.append(watchdog.take_expiry())
            raise
        finally:
            watchdog.stop()

    task = asyncio.create_task(run())
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, LONG)
    assert expiries == [None]
    assert task.cancelled()


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Task.uncancel() is 3.11+")
async def test_external_cancel_after_abort_is_not_swallowed() -> None:
    expiries: list[str | None] = []

    async def run() -> None:
        watchdog = Watchdog(idle_s=LONG, total_s=LONG)
        watchdog.begin_attempt(LONG)
        holder.append(watchdog)
        try:
            await asyncio.sleep(LONG)
        except asyncio.CancelledError:
            expiries.append(watchdog.take_expiry())
            raise
        finally:
            watchdog.stop()

    holder: list[Watchdog] = []
    task = asyncio.create_task(run())
    await asyncio.sleep(0)
    holder[0].abort("ollama unreachable")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert expiries == [None]


async def test_stop_prevents_firing() -> None:
    async def body(watchdog: Watchdog) -> None:
        watchdog.begin_attempt(0.02)
        watchdog.stop()
        watchdog.progress()  # a chunk after stop() does not re-arm the timer
        await asyncio.sleep(0.06)

    outcome = await guarded(body, idle_s=0.02, total_s=0.04)
    assert not outcome.cancelled
    assert outcome.expiry is None


async def test_stop_after_progress_prevents_idle_firing() -> None:
    async def body(watchdog: Watchdog) -> None:
        watchdog.begin_attempt(0.02)
        await asyncio.sleep(0.005)
        watchdog.progress()
        watchdog.stop()
        await asyncio.sleep(0.06)

    outcome = await guarded(body, idle_s=0.02, total_s=LONG)
    assert not outcome.cancelled


async def test_take_expiry_without_expiry_is_none() -> None:
    watchdog = Watchdog(idle_s=1, total_s=1)
    watchdog.begin_attempt(1)
    watchdog.stop()
    assert watchdog.take_expiry() is None


async def test_begin_attempt_forgets_the_previous_attempts_progress() -> None:
    watchdog = Watchdog(idle_s=1, total_s=1)
    watchdog.begin_attempt(1)
    watchdog.progress()
    assert watchdog.last_progress is not None
    watchdog.begin_attempt(1)
    assert watchdog.last_progress is None
    watchdog.stop()
