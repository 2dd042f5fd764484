"""pollex.server.AcceptFailureLog: accept failures at most once per window, with a count.

The real thing (a process out of descriptors) is in tests/integration/test_connections.py.
"""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from pollex.server import AcceptFailureLog


class _Log:
    def __init__(self) -> None:
        self.passed_on: list[dict[str, Any]] = []

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.passed_on.append(context)


async def test_accept_failure_log_counts_per_window_and_passes_the_rest_on() -> None:
    loop = asyncio.get_running_loop()
    previous = _Log()
    loop.set_exception_handler(previous)
    emfile = OSError(errno.EMFILE, "Too many open files")
    accept_failed = {"message": AcceptFailureLog.MESSAGE, "exception": emfile}
    try:
        with capture_logs() as logs:
            failures = AcceptFailureLog(loop, window_s=0.1)
            for _ in range(500):
                loop.call_exception_handler(accept_failed)
            loop.call_exception_handler({"message": "something else"})
            await asyncio.sleep(0.15)
            for _ in range(3):
                loop.call_exception_handler(accept_failed)
            await asyncio.sleep(0.35)
            failures.uninstall()
            restored = loop.get_exception_handler()
    finally:
        loop.set_exception_handler(None)

    counts = [entry["count"] for entry in logs if entry["event"] == "accept_failed"]
    assert counts[:2] == [1, 499]  # at once, then one line per window with what it collected
    assert sum(counts[2:]) == 3
    assert previous.passed_on == [{"message": "something else"}]
    assert restored is previous


def test_the_pollex_unit_raises_the_descriptor_limit() -> None:
    """systemd's default soft limit (1024) is what 1100 half-open clients exhausted."""
    unit = Path(__file__).resolve().parents[1] / "jetson" / "pollex.service"
    assert "LimitNOFILE=65536" in unit.read_text().splitlines()


async def test_uninstall_says_what_the_open_window_collected_and_restores_the_default(
    caplog: Any,
) -> None:
    loop = asyncio.get_running_loop()
    emfile = OSError(errno.EMFILE, "Too many open files")
    with capture_logs() as logs:
        failures = AcceptFailureLog(loop, window_s=10)
        for _ in range(3):
            loop.call_exception_handler({"message": AcceptFailureLog.MESSAGE, "exception": emfile})
        loop.call_exception_handler({"message": "not ours"})  # to asyncio's own handler
        failures.uninstall()

    assert [entry["count"] for entry in logs] == [1, 2]
    assert loop.get_exception_handler() is None
    assert "not ours" in caplog.text
