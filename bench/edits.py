"""What `edits` costs at `max_text_chars` (10,000 characters): time and memory.

Run: python bench/edits.py   (a few seconds)

Cases: prose (this repository's README) with 10 % of its words changed, which is what a
polish looks like, and the worst cases found by a random search over texts of repeated
words, punctuation only, shuffled blocks and interleaved changes: every other word
changed (2,500 edits), one word repeated, marks only. Each is timed five times (best
and median) and its peak of Python allocations measured once with tracemalloc. For
scale, the same token lists are matched by `difflib.SequenceMatcher` (autojunk off), the
obvious implementation, whose worst case is quadratic.
"""

from __future__ import annotations

import random
import re
import statistics
import time
import tracemalloc
from collections.abc import Callable
from difflib import SequenceMatcher
from functools import partial
from pathlib import Path

from pollex.edits import _TOKEN, edits

LIMIT = 10_000


def cases() -> dict[str, tuple[str, str]]:
    readme = (Path(__file__).parent.parent / "README.md").read_text("utf-8")
    prose = re.sub(r"```.*?```", "", readme, flags=re.S)[2000 : 2000 + LIMIT]
    rng = random.Random(1)
    changed = " ".join(w.upper() if rng.random() < 0.1 else w for w in prose.split(" "))
    words = [chr(0x4E00 + i) for i in range(2500)]
    return {
        "prose, 10% of words changed": (prose, changed),
        "every other word changed": (
            " ".join(f"y {w}" for w in words)[:LIMIT],
            " ".join(f"z {w}" for w in words)[:LIMIT],
        ),
        "one word repeated": ("a " * 5000, "b " + "a " * 4998 + "b"),
        "marks only": (".," * 5000, ",." * 5000),
    }


def timed(run: Callable[[], object], repeat: int = 5) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times), statistics.median(times)


def peak_mib(run: Callable[[], object]) -> float:
    tracemalloc.start()
    run()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    print(f"{'case':30} {'edits':>6} {'best':>9} {'median':>9} {'peak':>9}  SequenceMatcher")
    for name, (old, new) in cases().items():
        count = len(edits(old, new))
        best, median = timed(partial(edits, old, new))
        peak = peak_mib(partial(edits, old, new))
        a, b = _TOKEN.findall(old), _TOKEN.findall(new)
        slow, _ = timed(SequenceMatcher(None, a, b, False).get_opcodes, 1)
        print(
            f"{name:30} {count:6} {best * 1000:7.1f}ms {median * 1000:7.1f}ms"
            f" {peak:6.1f}MiB  {slow * 1000:7.1f}ms"
        )


if __name__ == "__main__":
    main()
