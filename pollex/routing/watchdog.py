"""Time limits of one polish: first token, silence between tokens, the whole request.

The whole-request limit runs from the start, a wait for a slot included; the first-token
limit starts with each attempt, when the request has its slot.

One timer per request, re-armed lazily: each chunk only stores the time it arrived, and
when the timer fires it either finds progress and re-arms at the new deadline, or cancels
the task that waits on the upstream. That keeps the per-token cost at one float store,
where rescheduling a timeout per chunk would cost a heap operation each time.
"""

from __future__ import annotations

import asyncio
import math
import sys

SHUTDOWN = "shutdown"
TOTAL = "total"


class Watchdog:
    def __init__(self, *, idle_s: float, total_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None, "a Watchdog guards the task that creates it"
        self._task = task
        self._idle = idle_s
        self._total_deadline = self._loop.time() + total_s
        # Until an attempt begins (while the request waits for a slot) only the total counts.
        self._first_token = math.inf
        self._attempt_start = 0.0
        self.last_progress: float | None = None
        self._expired: str | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._finished = False
        self._arm()

    def begin_attempt(self, first_token_s: float) -> None:
        """A new upstream is asked: it gets its own first-token budget."""
        self._attempt_start = self._loop.time()
        self._first_token = first_token_s
        self.last_progress = None
        self._arm()

    def progress(self) -> None:
        first = self.last_progress is None
        self.last_progress = self._loop.time()
        if first and self._handle is not None:
            # The timer waits for the first-token deadline, and the idle deadline may come
            # before it: re-arm once per attempt. Later chunks only push the deadline out,
            # which the lazy re-arm in `_fire` handles.
            self._arm()

    def abort(self, reason: str) -> None:
        """Stop waiting now (the adapter was found down while we waited on it)."""
        self._expire(f"abandoned: {reason}")

    def shutdown(self) -> None:
        """End the request now: the server is stopping and its grace time is over."""
        self._expire(SHUTDOWN)

    def stop(self) -> None:
        """The request is over: nothing may fire any more."""
        self._finished = True
        self._cancel_timer()

    def _cancel_timer(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def take_expiry(self) -> str | None:
        """After a CancelledError: why this watchdog caused it, or None if it did not.

        Returns None as well when someone else (a client that left, shutdown) also
        cancelled the task, so that cancellation is not swallowed.
        """
        reason, self._expired = self._expired, None
        if reason is None:
            return None
        if sys.version_info >= (3, 11) and self._task.uncancel() > 0:
            return None
        return reason

    def _deadline(self) -> tuple[float, str]:
        if self.last_progress is None:
            limit, why = self._attempt_start + self._first_token, "first_token"
        else:
            limit, why = self.last_progress + self._idle, "idle"
        if self._total_deadline <= limit:
            return self._total_deadline, TOTAL
        return limit, why

    def _arm(self) -> None:
        self._cancel_timer()
        when, _ = self._deadline()
        self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        when, why = self._deadline()
        if self._loop.time() < when:
            self._handle = self._loop.call_at(when, self._fire)
        else:
            self._expire(why)

    def _expire(self, why: str) -> None:
        if self._expired is None and not self._finished:
            self._expired = why
            self._cancel_timer()
            self._task.cancel()
