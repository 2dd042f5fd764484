"""`pollex bench`: compare backends on the same texts, through a running pollex.

For each sample, `--runs` times, each model in turn (interleaved, so a machine that slows
down as it warms up slows every model alike): one streamed `/api/polish` pinned to the
model (`model_id`, `"fallback": false`), one request at a time (see `measure` for what is
timed). Each sample's table is printed when its runs are done, the comparison at the end.

A model that is down (unknown to pollex, listed as unavailable, or answered 503) is
reported and skipped, a failed request is reported, and the rest goes on; what worked is
printed, then the exit status says what did not: 5 when pollex refused something (unknown
model, a text too long), else 6 when a model was down or failed, else 1. Losing pollex
itself (no connection, wrong key) stops the bench with the status `pollex polish` uses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from pollex.client import report
from pollex.client.answers import (
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_UPSTREAM,
    EXIT_USAGE,
    Failure,
)
from pollex.client.corpus import CorpusError, Sample, gather, select
from pollex.client.display import BenchProgress as Progress
from pollex.client.measure import Http, RequestFailed, connection
from pollex.client.report import Run, SampleResult

if TYPE_CHECKING:
    import aiohttp

DEFAULT_URL = "http://127.0.0.1:8090"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Time models on the same texts through a running pollex: for each sample, N streamed "
        "polishes per model, pinned to it (no fallback). Prints a table per sample (median, "
        "min-max) and how each model compares with the first."
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("POLLEX_URL") or DEFAULT_URL,
        help=f"pollex base URL (env POLLEX_URL, default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("POLLEX_API_KEY") or None,
        help="sent as X-API-Key (env POLLEX_API_KEY)",
    )
    parser.add_argument(
        "--models", required=True, metavar="A,B", help="model ids; each is compared with the first"
    )
    parser.add_argument(
        "--runs", type=_positive, default=3, metavar="N", help="timed runs per sample and model (3)"
    )
    parser.add_argument("--warmup", action="store_true", help="one untimed request per model first")
    parser.add_argument(
        "--samples", metavar="NAMES", help="only these samples: names or wildcards, comma-separated"
    )
    parser.add_argument(
        "--file",
        action="append",
        default=[],
        help="add your own texts, one per blank-line-separated block; a .jsonl file: one "
        '{"name"?, "text"} per line (repeatable)',
    )
    parser.add_argument(
        "--json", dest="json_out", metavar="OUT", help="write every figure as JSON (- for stdout)"
    )
    parser.add_argument(
        "--quality", action="store_true", help="one untimed run: the models' outputs side by side"
    )


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError("must be a whole number, 1 or more")
    return int(value)


@dataclass
class Options:
    url: str
    models: list[str]
    samples: list[Sample]
    api_key: str | None = None
    runs: int = 3
    warmup: bool = False
    quality: bool = False
    json_out: str | None = None
    width: int = 100


def run(args: argparse.Namespace) -> int:
    """The `bench` subcommand; returns the exit status."""
    try:
        options = options_from(args)
    except Failure as exc:
        print(f"pollex: {exc}", file=sys.stderr)
        return exc.exit_code
    progress = Progress(sys.stderr, enabled=sys.stderr.isatty())
    try:
        return asyncio.run(bench(options, sys.stdout, progress))
    except KeyboardInterrupt:
        progress.clear()
        return 130


def options_from(args: argparse.Namespace) -> Options:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:
        raise Failure("--models: give at least one model id", EXIT_USAGE)
    twice = next((m for m in models if models.count(m) > 1), None)
    if twice is not None:
        raise Failure(f"--models: {twice} is listed twice", EXIT_USAGE)
    try:
        samples = gather(args.file)
    except CorpusError as exc:
        raise Failure(str(exc), EXIT_BAD_INPUT) from None
    try:
        samples = select(samples, [p.strip() for p in (args.samples or "").split(",") if p.strip()])
    except CorpusError as exc:
        raise Failure(f"--samples: {exc}", EXIT_USAGE) from None
    out = args.json_out
    if out and out != "-" and not os.access(Path(out).parent, os.W_OK):
        raise Failure(f"--json: cannot write into {Path(out).parent}", EXIT_USAGE)
    width = shutil.get_terminal_size((100, 24)).columns
    return Options(
        args.url, models, samples, args.api_key, args.runs, args.warmup, args.quality, out, width
    )


async def bench(options: Options, out: IO[str], progress: Progress) -> int:
    """The whole bench; the report goes to `out`, or to stderr when the JSON takes stdout."""
    job = Bench(options, progress.err if options.json_out == "-" else out, progress)
    try:
        async with connection(options.url) as session:
            await job.run(session)
    except Failure as exc:
        job.fatal = exc
    return job.finish(out)


@dataclass
class Bench:
    options: Options
    report_to: IO[str]
    progress: Progress
    results: list[SampleResult] = field(default_factory=list)
    down: dict[str, str] = field(default_factory=dict)
    codes: set[int] = field(default_factory=set)
    fatal: Failure | None = None
    checked: bool = False  # pollex listed its models: there is something to report

    async def run(self, session: aiohttp.ClientSession) -> None:
        opts, progress = self.options, self.progress
        self.http = Http(session, opts.url, opts.api_key, progress.text, progress.waiting)
        known = await self.http.models()
        self.checked = True
        for model in opts.models:
            if model not in known:
                self._mark_down(model, f"unknown model (pollex has {', '.join(known)})")
                self.codes.add(EXIT_BAD_INPUT)
            elif not known[model]:
                self._mark_down(model, "pollex lists it as unavailable")
        await (self._quality() if opts.quality else self._timing())

    def live(self) -> list[str]:
        return [m for m in self.options.models if m not in self.down]

    async def _timing(self) -> None:
        opts = self.options
        if opts.warmup:
            shortest = min(opts.samples, key=lambda s: len(s.text))
            for model in self.live():
                self.progress.step(f"warm-up · {model}")
                await self._measure(model, shortest, 0)
        steps, step = len(opts.samples) * opts.runs * len(self.live()), 0
        for sample in opts.samples:
            if not self.live():
                return
            result = SampleResult(sample)
            self.results.append(result)
            for n in range(1, opts.runs + 1):
                for model in self.live():
                    step += 1
                    self.progress.step(f"[{step}/{steps}] {sample.name} · {model} · run {n}")
                    result.runs.append(await self._measure(model, sample, n))
            self._print(*report.sample_table(result, opts.models, self.down), "")

    async def _quality(self) -> None:
        width, models = self.options.width, self.options.models
        for sample in self.options.samples:
            result = SampleResult(sample)
            self.results.append(result)
            for model in self.live():
                self.progress.step(f"{sample.name} · {model}")
                result.runs.append(await self._measure(model, sample, 1))
            said = {
                r.model: r.output if r.error is None else f"(failed: {r.error})"
                for r in result.runs
            }
            columns = [(m, said.get(m) or f"(down: {self.down.get(m)})") for m in models]
            title = f"── {sample.name} ({len(sample.text)} chars) ".ljust(width, "─")
            sample_lines = report.wrap(sample.text, width)
            self._print(title, *sample_lines, "", *report.side_by_side(columns, width), "")

    async def _measure(self, model: str, sample: Sample, n: int) -> Run:
        try:
            return await self.http.polish(model, sample.text, n)
        except RequestFailed as exc:
            self.codes.add(exc.exit_code)
            if exc.down:
                self._mark_down(model, str(exc))
            else:
                what = "warm-up" if n == 0 else f"{sample.name}, run {n}"
                self.progress.note(f"pollex: {model}, {what}: {exc}")
            return Run(model, n, error=str(exc))

    def _mark_down(self, model: str, reason: str) -> None:
        self.down[model] = reason
        self.codes.add(EXIT_UPSTREAM)
        self.progress.note(f"pollex: {model} is down: {reason}")

    def _print(self, *lines: str) -> None:
        self.progress.clear()
        self.report_to.write("".join(line + "\n" for line in lines))
        self.report_to.flush()

    def finish(self, out: IO[str]) -> int:
        """The rest of the report, the JSON and the exit status, of what was measured."""
        opts = self.options
        if not opts.quality and self.results and self.results[-1].runs and self.fatal:
            self._print(*report.sample_table(self.results[-1], opts.models, self.down), "")
        self._print(*report.closing(self.results, opts.models, self.down, timing=not opts.quality))
        if self.fatal is not None:
            code = self.fatal.exit_code
        else:
            order = (EXIT_BAD_INPUT, EXIT_UPSTREAM, EXIT_FAILURE)
            code = next((c for c in order if c in self.codes), EXIT_OK)
        if opts.json_out and self.checked and not self._write_json(out, code):
            code = code or EXIT_FAILURE
        if self.fatal is not None:
            self.progress.note(f"pollex: {self.fatal}")
        return code

    def _write_json(self, out: IO[str], code: int) -> bool:
        opts = self.options
        shape = report.quality_json if opts.quality else report.timing_json
        document = {
            "url": opts.url,
            "mode": "quality" if opts.quality else "timing",
            "runs": 1 if opts.quality else opts.runs,
            "warmup": opts.warmup and not opts.quality,
            **shape(self.results, opts.models, self.down),
            "exit_code": code,
            "error": None if self.fatal is None else str(self.fatal),
        }
        text = json.dumps(document, ensure_ascii=False, indent=2) + "\n"
        if opts.json_out == "-":
            out.write(text)
            out.flush()
            return True
        try:
            Path(opts.json_out or "").write_text(text, encoding="utf-8")
        except OSError as exc:
            self.progress.note(f"pollex: cannot write {opts.json_out}: {exc.strerror}")
            return False
        return True
