"""The sliding-window limiter and the request-identity helpers of pollex.guard."""

from __future__ import annotations

import sys

import pytest

from pollex.web.guard import MAX_CLIENTS, SlidingWindowLimiter, key_is_valid


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_allows_limit_then_refuses_with_wait(clock: Clock) -> None:
    limiter = SlidingWindowLimiter(3, window_s=60, clock=clock)

    assert [limiter.hit("a") for _ in range(3)] == [None, None, None]
    clock.now += 10
    assert limiter.hit("a") == pytest.approx(50)


def test_window_slides(clock: Clock) -> None:
    limiter = SlidingWindowLimiter(2, window_s=60, clock=clock)
    limiter.hit("a")
    clock.now += 30
    limiter.hit("a")
    clock.now += 31  # the first request left the window, the second has not

    assert limiter.hit("a") is None
    assert limiter.hit("a") is not None


def test_refused_requests_do_not_extend_the_wait(clock: Clock) -> None:
    limiter = SlidingWindowLimiter(1, window_s=60, clock=clock)
    limiter.hit("a")
    for _ in range(100):
        clock.now += 0.5
        limiter.hit("a")

    clock.now = 1000.0 + 60.1
    assert limiter.hit("a") is None


def test_clients_are_independent(clock: Clock) -> None:
    limiter = SlidingWindowLimiter(1, clock=clock)

    assert limiter.hit("a") is None
    assert limiter.hit("b") is None
    assert limiter.hit("a") is not None


def test_idle_clients_are_forgotten(clock: Clock) -> None:
    limiter = SlidingWindowLimiter(5, window_s=60, clock=clock)
    for n in range(100):
        limiter.hit(f"10.0.0.{n}")
    assert len(limiter) == 100

    clock.now += 61
    limiter.hit("192.0.2.1")

    assert len(limiter) == 1


def test_a_flood_of_distinct_clients_is_bounded(clock: Clock) -> None:
    limiter = SlidingWindowLimiter(10, window_s=60, max_clients=1000, clock=clock)

    for n in range(50_000):
        limiter.hit(f"client-{n}")

    assert len(limiter) == 1000
    held = sum(sys.getsizeof(d) for d in limiter._clients.values())
    assert held < 1000 * 1024  # each client's window is a deque of at most `limit` floats


def test_default_bound_is_stated() -> None:
    assert SlidingWindowLimiter(10).max_clients == MAX_CLIENTS == 4096


@pytest.mark.parametrize(
    ("presented", "expected", "valid"),
    [("k", "k", True), ("k", "K", False), ("", "k", False), ("ké", "ké", True), ("k1", "k", False)],
)
def test_key_comparison(presented: str, expected: str, valid: bool) -> None:
    assert key_is_valid(presented, expected) is valid
