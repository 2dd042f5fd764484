"""What `pollex bench` makes of its runs: statistics, tables, comparisons, JSON.

Everything here is pure: runs in, numbers and lines of text out. A figure a run does not
have (a failed run; tokens/s from an upstream that does not report it) is `None` and is
left out of the statistics rather than counted as zero.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import zip_longest
from typing import Any

from pollex.client.corpus import Sample

# The times sign and the en dash, escaped: linters suspect the look-alikes of x and -.
TIMES, DASH = "\u00d7", "\u2013"

# The figures of a run, and whether a higher value is the better one.
FIGURES = {"ttft_s": False, "total_s": False, "output_chars": False, "tokens_per_second": True}
# The figures compared between models: key in JSON -> (figure, label in text).
RATIOS = {
    "ttft": ("ttft_s", "TTFT"),
    "total": ("total_s", "total"),
    "tokens_per_second": ("tokens_per_second", "tokens/s"),
}


@dataclass
class Run:
    model: str
    run: int
    ttft_s: float | None = None
    total_s: float | None = None
    output_chars: int | None = None
    tokens_per_second: float | None = None
    error: str | None = None
    output: str | None = field(default=None, repr=False)

    def figures(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "output"}


@dataclass
class SampleResult:
    sample: Sample
    runs: list[Run] = field(default_factory=list)

    def of(self, model: str) -> list[Run]:
        return [r for r in self.runs if r.model == model]


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float


# --- statistics ------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def spread(values: Iterable[float | None]) -> Spread | None:
    """Median, minimum and maximum of the values that are there; None when none are."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return Spread(median(present), min(present), max(present))


def ratio(new: float | None, base: float | None) -> float | None:
    if new is None or base is None or base <= 0:
        return None
    return new / base


def geomean(values: Iterable[float | None]) -> float | None:
    """The mean of ratios: symmetric, so A vs B is exactly 1 / (B vs A)."""
    present = [v for v in values if v is not None and v > 0]
    if not present:
        return None
    return math.exp(sum(math.log(v) for v in present) / len(present))


def summarize(runs: Sequence[Run]) -> dict[str, Spread | None]:
    ok = [r for r in runs if r.error is None]
    return {name: spread(getattr(r, name) for r in ok) for name in FIGURES}


def compare(result: SampleResult, model: str, base: str) -> dict[str, float | None]:
    """`model`'s median over `base`'s, per figure of RATIOS."""
    new, old = summarize(result.of(model)), summarize(result.of(base))
    return {key: ratio(_median(new[name]), _median(old[name])) for key, (name, _) in RATIOS.items()}


def overall(results: Sequence[SampleResult], model: str, base: str) -> dict[str, float | None]:
    """The geometric mean over the samples of each per-sample ratio."""
    per_sample = [compare(r, model, base) for r in results]
    return {key: geomean(c[key] for c in per_sample) for key in RATIOS}


def _median(s: Spread | None) -> float | None:
    return None if s is None else s.median


# --- text --------------------------------------------------------------------------------------


def sample_table(result: SampleResult, models: Sequence[str], down: dict[str, str]) -> list[str]:
    sample = result.sample
    rows = [["model", "ok", "TTFT", "total", "chars", "tokens/s"]]
    for model in models:
        runs = result.of(model)
        ok = sum(r.error is None for r in runs)
        if model in down and not ok:
            rows.append([model, f"down: {down[model]}"])
            continue
        figures = summarize(runs)
        rows.append(
            [
                model,
                f"{ok}/{len(runs)}",
                _seconds(figures["ttft_s"]),
                _seconds(figures["total_s"]),
                _plain(figures["output_chars"], "{:.0f}"),
                _plain(figures["tokens_per_second"], "{:.1f}"),
            ]
        )
    lines = [f"{sample.name} ({len(sample.text)} chars)", *_columns(rows)]
    base = models[0]
    lines += [
        "  " + comparison_line(model, base, compare(result, model, base), result.runs)
        for model in models[1:]
        if all(any(r.error is None for r in result.of(m)) for m in (model, base))
    ]
    return lines


def closing(
    results: Sequence[SampleResult], models: Sequence[str], down: dict[str, str], *, timing: bool
) -> list[str]:
    """After the tables: each model against the first over all samples, and the count."""
    runs = [r for result in results for r in result.runs]
    if not runs:
        return []
    lines = []
    measured = sum(bool(r.runs) for r in results)
    if timing and len(models) > 1:
        base = models[0]
        lines.append(
            f"Compared with {base} (ratios of medians, geometric mean over "
            f"{_count(measured, 'sample')}):"
        )
        lines += [
            "  " + comparison_line(m, base, overall(results, m, base), runs) for m in models[1:]
        ]
    failed = sum(r.error is not None for r in runs)
    gone = "".join(f"; {m} is down" for m in models if m in down)
    lines.append(f"{_count(len(runs), 'request')}: {len(runs) - failed} ok, {failed} failed{gone}")
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def comparison_line(
    model: str, base: str, ratios: dict[str, float | None], runs: Sequence[Run]
) -> str:
    """`B vs A: TTFT x0.25 (4.0x faster), ...` (with a real times sign); a ratio that
    cannot be had says why."""
    idle = [m for m in (model, base) if not any(r.model == m and r.error is None for r in runs)]
    if idle:
        return f"{model} vs {base}: nothing to compare ({' and '.join(idle)}: no run succeeded)"
    parts = []
    for key, (name, label) in RATIOS.items():
        value = ratios[key]
        if value is not None:
            parts.append(f"{label} {TIMES}{value:.2f} ({_verdict(value, FIGURES[name])})")
            continue
        ok = {
            m: [getattr(r, name) for r in runs if r.model == m and r.error is None]
            for m in (base, model)
        }
        silent = [m for m, values in ok.items() if values and all(v is None for v in values)]
        why = " and ".join(silent) + " did not report it" if silent else "no runs to compare"
        parts.append(f"{label} n/a ({why})")
    return f"{model} vs {base}: " + ", ".join(parts)


def _verdict(value: float, higher_is_better: bool) -> str:
    if round(value, 2) == 1:
        return "same"
    better = value > 1 if higher_is_better else value < 1
    factor = value if value > 1 else 1 / value
    return f"{factor:.1f}{TIMES} {'faster' if better else 'slower'}"


def _seconds(s: Spread | None) -> str:
    if s is None:
        return "-"
    if s.median < 1:
        return _plain(Spread(s.median * 1000, s.low * 1000, s.high * 1000), "{:.0f}", " ms")
    return _plain(s, "{:.1f}", " s")


def _plain(s: Spread | None, number: str, unit: str = "") -> str:
    """`median unit (min-max)`, or only the median when the range shows none."""
    if s is None:
        return "-"
    mid, low, high = (number.format(v) for v in (s.median, s.low, s.high))
    return f"{mid}{unit}" if low == high else f"{mid}{unit} ({low}{DASH}{high})"


def _columns(rows: Sequence[Sequence[str]]) -> list[str]:
    """Aligned cells; the last cell of a short row (a model that is down) widens nothing."""
    count = len(rows[0])
    widths = [
        max(len(r[i]) for r in rows if i < len(r) - 1 or len(r) == count) for i in range(count)
    ]
    return [
        "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in rows
    ]


def side_by_side(columns: Sequence[tuple[str, str]], width: int) -> list[str]:
    """Texts in columns under their titles, each wrapped to its share of `width`; one
    under the other when the share would be too narrow to read."""
    gap = " │ "
    inner = (width - len(gap) * (len(columns) - 1)) // max(len(columns), 1)
    if inner < 24:
        return [line for title, text in columns for line in [f"[{title}]", *wrap(text, width), ""]]
    wrapped = [
        [title[:inner], "─" * min(len(title), inner), *wrap(text, inner)] for title, text in columns
    ]
    return [
        gap.join(cell.ljust(inner) for cell in row).rstrip()
        for row in zip_longest(*wrapped, fillvalue="")
    ]


def wrap(text: str, width: int) -> list[str]:
    """Each line of `text` wrapped to `width`; blank lines kept."""
    return [
        part
        for line in text.splitlines()
        for part in (textwrap.wrap(line, width, break_long_words=True) or [""])
    ]


# --- JSON --------------------------------------------------------------------------------------


def timing_json(
    results: Sequence[SampleResult], models: Sequence[str], down: dict[str, str]
) -> dict[str, Any]:
    base = models[0]
    return {
        "models": [{"id": m, "down": down.get(m)} for m in models],
        "samples": [
            {
                **_sample_json(r.sample),
                "runs": [run.figures() for run in r.runs],
                "summary": {
                    m: {
                        "ok": sum(run.error is None for run in r.of(m)),
                        "failed": sum(run.error is not None for run in r.of(m)),
                        **{k: _spread_json(v) for k, v in summarize(r.of(m)).items()},
                    }
                    for m in models
                },
                "vs": [{"model": m, "base": base, **compare(r, m, base)} for m in models[1:]],
            }
            for r in results
        ],
        "summary": [{"model": m, "base": base, **overall(results, m, base)} for m in models[1:]],
    }


def quality_json(
    results: Sequence[SampleResult], models: Sequence[str], down: dict[str, str]
) -> dict[str, Any]:
    return {
        "models": [{"id": m, "down": down.get(m)} for m in models],
        "samples": [
            {
                **_sample_json(r.sample),
                "text": r.sample.text,
                "outputs": {
                    run.model: {"polished": run.output, "error": run.error} for run in r.runs
                },
            }
            for r in results
        ],
    }


def _sample_json(sample: Sample) -> dict[str, Any]:
    return {"name": sample.name, "source": sample.source, "chars": len(sample.text)}


def _spread_json(s: Spread | None) -> dict[str, float] | None:
    return None if s is None else {"median": s.median, "min": s.low, "max": s.high}
