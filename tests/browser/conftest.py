"""The polish page in a real browser: Debian's Chromium driven by Playwright for Python.

Playwright talks to the browser over its DevTools protocol and is pointed at the system
Chromium (`/usr/bin/chromium`, or `POLLEX_CHROMIUM`): nothing downloads a browser, ever
(`playwright install` is never run). pollex runs as a real `pollex serve --mock`
subprocess on a free loopback port, logging JSON lines on stdout, which the tests read
for the access-log line of a request.

Outside CI, a missing Chromium or Playwright skips these tests with the reason; under CI
(`CI` set, as `.ci/run` does) it fails them instead, so a browser test never silently
stops running.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import PollexProcess, free_port

CHROMIUM = os.environ.get("POLLEX_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
START_TIMEOUT_S = 10.0


def _unavailable() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set POLLEX_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium per module. Not per session: while the sync Playwright API is open, its
    event loop counts as running in this thread, and the async tests after it cannot run
    theirs."""
    reason = _unavailable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests cannot run under CI: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context (no storage from another test), 900 px wide."""
    context = browser.new_context(viewport={"width": 900, "height": 1000})
    yield context.new_page()
    context.close()


@pytest.fixture
def serve_pollex() -> Iterator[Callable[..., PollexProcess]]:
    """Start `pollex serve --mock` with settings (as `POLLEX_*`); stopped after the test."""
    started: list[PollexProcess] = []

    def start(**settings: str) -> PollexProcess:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("POLLEX_")}
        env.update({"POLLEX_LOG_FORMAT": "json", "POLLEX_PORT": str(port)})
        env.update({f"POLLEX_{k.upper()}": v for k, v in settings.items()})
        # The mock, unless the test configures a backend of its own (one that is down).
        mock = [] if "llamacpp_url" in settings else ["--mock"]
        process = subprocess.Popen(
            [sys.executable, "-m", "pollex", "serve", *mock],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        pollex = PollexProcess(f"http://127.0.0.1:{port}", process)
        started.append(pollex)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert process.poll() is None, f"pollex exited with {process.returncode}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{pollex.url}/health", timeout=1).status_code in (200, 503):
                    return pollex
            time.sleep(0.05)
        raise AssertionError(f"pollex did not answer on {pollex.url}")

    yield start
    for pollex in started:
        pollex.process.terminate()
        try:
            pollex.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pollex.process.kill()
            pollex.process.wait()
        pollex.reader.join(timeout=5)
        assert pollex.process.stdout is not None
        pollex.process.stdout.close()
