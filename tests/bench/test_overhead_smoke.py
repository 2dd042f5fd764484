"""bench/overhead.py runs end to end and reports every figure (no thresholds: CI machines
differ; the README has the figures of a full run)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parents[2] / "bench" / "overhead.py"
FIGURES = (
    "TTFT added, p50 / p99, 1 client",
    "TTFT added, p50, 4 clients",
    "total time vs direct, p50, 4 clients",
    "pollex CPU per 1,000 tokens, 1 / 4 clients",
    "idle / peak RSS",
    "ready after start",
    "/api/health p50 / p99, 4 streams in flight",
)


def test_a_smoke_run_reports_every_figure() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--smoke"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    rows = dict(
        line.strip("| ").split(" | ", 1)
        for line in done.stdout.splitlines()
        if line.startswith("| ") and "---" not in line
    )
    for figure in FIGURES:
        value = rows[figure].rstrip(" |")
        assert re.search(r"\d", value) and "nan" not in value, (figure, value)
