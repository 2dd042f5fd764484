"""`pollex bench`: statistics, samples, JSON shape, and whole runs against a real pollex."""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from fakes import closed_port_url
from helpers import Terminal, url_of

from pollex.adapters.mock import tidy
from pollex.cli import build_parser
from pollex.client import answers, corpus, measure, report
from pollex.client.answers import (
    EXIT_AUTH,
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_UPSTREAM,
    EXIT_USAGE,
)
from pollex.client.bench import Options, Progress, bench, options_from
from pollex.client.corpus import CorpusError, Sample
from pollex.client.report import Run, SampleResult, Spread

TIMES, DASH = report.TIMES, report.DASH
OLLAMA = "qwen2.5:1.5b"  # FakeOllama: "I went to the store yesterday." at 7 / 1.75 s = 4 tokens/s
# A few words each: the mock streams a word every 30 ms.
# What pollex's own 429 carries (its error answers have an X-Request-ID; another server's
# do not, and pollex bench says so).
POLLEX_429 = {"Retry-After": "0", "X-Request-ID": "0" * 32}
TINY = [Sample("one", "i goes home", "test"), Sample("two", "we has  a meeting", "test")]


async def run_bench(url: str, models: list[str], **options: Any) -> tuple[int, str, str]:
    """The whole command in-process; stdout and stderr as text."""
    out, err = io.StringIO(), io.StringIO()
    samples = options.pop("samples", TINY)
    code = await bench(Options(url, models, samples, **options), out, Progress(err, enabled=False))
    return code, out.getvalue(), err.getvalue()


# --- statistics ------------------------------------------------------------------------------


def test_spread_is_median_min_max_of_what_is_there() -> None:
    assert report.spread([3.0, None, 1.0, 2.0]) == Spread(2.0, 1.0, 3.0)
    assert report.spread([4.0, 1.0, 2.0, 10.0]) == Spread(3.0, 1.0, 10.0)
    assert report.spread([None, None]) is None
    assert report.spread([]) is None


def test_ratio_and_its_mean() -> None:
    assert report.ratio(1.0, 4.0) == 0.25
    assert report.ratio(None, 4.0) is None
    assert report.ratio(1.0, None) is None
    assert report.ratio(1.0, 0.0) is None
    assert report.geomean([4.0, 0.25]) == pytest.approx(1.0)  # symmetric: A/B and B/A cancel
    assert report.geomean([2.0, None, 8.0]) == pytest.approx(4.0)
    assert report.geomean([None]) is None


def _result(name: str, *runs: Run) -> SampleResult:
    return SampleResult(Sample(name, "x" * 10, "test"), list(runs))


def _ok(model: str, run: int, ttft: float, total: float, tps: float | None = None) -> Run:
    return Run(model, run, ttft_s=ttft, total_s=total, output_chars=10, tokens_per_second=tps)


def test_comparison_says_which_way_is_better() -> None:
    result = _result(
        "s",
        _ok("cpu", 1, 4.0, 40.0, 2.0),
        _ok("gpu", 1, 1.0, 10.0, 8.0),
        _ok("cpu", 2, 6.0, 60.0, 2.0),
        _ok("gpu", 2, 1.0, 30.0, 8.0),
    )

    ratios = report.compare(result, "gpu", "cpu")
    line = report.comparison_line("gpu", "cpu", ratios, result.runs)

    assert ratios == {"ttft": 0.2, "total": 0.4, "tokens_per_second": 4.0}
    assert line == (
        f"gpu vs cpu: TTFT {TIMES}0.20 (5.0{TIMES} faster), total {TIMES}0.40 "
        f"(2.5{TIMES} faster), tokens/s {TIMES}4.00 (4.0{TIMES} faster)"
    )
    backwards = report.comparison_line(
        "cpu", "gpu", report.compare(result, "cpu", "gpu"), result.runs
    )
    assert f"TTFT {TIMES}5.00 (5.0{TIMES} slower)" in backwards


def test_comparison_without_tokens_per_second_says_who_did_not_report_it() -> None:
    runs = [_ok("ollama", 1, 1.0, 2.0, 4.0), _ok("mock", 1, 1.0, 2.0)]
    result = _result("s", *runs)

    line = report.comparison_line("mock", "ollama", report.compare(result, "mock", "ollama"), runs)

    assert line == (
        f"mock vs ollama: TTFT {TIMES}1.00 (same), total {TIMES}1.00 (same), "
        "tokens/s n/a (mock did not report it)"
    )


def test_overall_is_the_geometric_mean_of_the_samples_ratios() -> None:
    results = [
        _result("a", _ok("A", 1, 1.0, 10.0), _ok("B", 1, 0.5, 2.5)),
        _result("b", _ok("A", 1, 1.0, 10.0), _ok("B", 1, 2.0, 10.0)),
    ]

    ratios = report.overall(results, "B", "A")

    assert ratios["ttft"] == pytest.approx(1.0)  # x0.5 and x2
    assert ratios["total"] == pytest.approx(0.5)  # x0.25 and x1
    assert ratios["tokens_per_second"] is None


def test_sample_table() -> None:
    result = _result(
        "memo",
        _ok("A", 1, 0.25, 1.5),
        _ok("A", 2, 0.5, 2.25),
        Run("A", 3, error="upstream stopped sending output"),
    )

    lines = report.sample_table(result, ["A", "B"], {"B": "pollex lists it as unavailable"})

    assert lines == [
        "memo (10 chars)",
        "  model  ok   TTFT              total            chars  tokens/s",
        f"  A      2/3  375 ms (250{DASH}500)  1.9 s (1.5{DASH}2.2)  10     -",
        "  B      down: pollex lists it as unavailable",
    ]


def test_side_by_side_wraps_each_text_in_its_column() -> None:
    texts = [("A", "one two three four five six seven"), ("B", "eight")]

    lines = report.side_by_side(texts, width=55)

    assert lines == [
        "A" + " " * 25 + " │ B",
        "─" + " " * 25 + " │ ─",
        "one two three four five    │ eight",
        "six seven                  │",
    ]
    narrow = report.side_by_side(texts, width=40)  # under 24 columns each: one after the other
    assert narrow == ["[A]", "one two three four five six seven", "", "[B]", "eight", ""]


# --- samples ---------------------------------------------------------------------------------


def test_built_in_samples_go_from_tiny_to_long() -> None:
    samples = corpus.builtin()
    sizes = [len(s.text) for s in samples]

    assert len(samples) >= 5
    assert sizes == sorted(sizes)
    assert 80 <= sizes[0] <= 140
    assert 1800 <= sizes[-1] <= 2200
    assert len({s.name for s in samples}) == len(samples)
    assert all(s.source == "built-in" and s.text == s.text.strip() for s in samples)


def test_blocks_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("\n\nfirst line\nsame text  \n \t\n\n  second\n", encoding="utf-8")

    samples = corpus.load_file(str(path))

    assert samples == [
        Sample("notes-1", "first line\nsame text", str(path)),
        Sample("notes-2", "  second", str(path)),
    ]


@pytest.mark.parametrize("suffix", [".jsonl", ".ndjson"])
def test_jsonl_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"mine{suffix}"
    lines = ['{"name": "memo", "text": "one\\n\\ntwo"}', "", '{"text": "three"}']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    samples = corpus.load_file(str(path))

    assert [(s.name, s.text) for s in samples] == [("memo", "one\n\ntwo"), ("mine-2", "three")]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.jsonl", b'{"text": "ok"}\n{"text": \n', "{}, line 2: not JSON"),
        ("a.jsonl", b'["text"]\n', '{}, line 1: not a JSON object like {{"text": "..."}}'),
        ("a.jsonl", b'{"name": "x"}\n', '{}, line 1: "text" must be a non-empty string'),
        ("a.jsonl", b'{"text": "  "}\n', '{}, line 1: "text" must be a non-empty string'),
        ("a.jsonl", b'{"text": "t", "name": 3}\n', '{}, line 1: "name" must be a non-empty string'),
        ("a.jsonl", b"\n\n", '{} holds no text (one {{"text": ...}} object per line)'),
        (
            "a.txt",
            b" \n\n",
            "{} holds no text (one text per block of lines, blocks separated by a blank line)",
        ),
        ("a.txt", b"caf\xe9\n", "{} is not UTF-8 text"),
    ],
)
def test_bad_files_say_what_is_wrong(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)

    with pytest.raises(CorpusError) as caught:
        corpus.load_file(str(path))

    assert str(caught.value) == message.format(path)


def test_missing_file_and_duplicate_names(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=r"^cannot read nope\.txt: No such file or directory$"):
        corpus.load_file("nope.txt")
    path = tmp_path / "mine.jsonl"
    path.write_text('{"name": "chat", "text": "hello"}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match="two samples are named 'chat'"):
        corpus.gather([str(path)])


def test_select_by_name_or_wildcard_in_corpus_order() -> None:
    samples = [Sample(n, "t", "test") for n in ("chat", "email", "notes-1", "notes-2")]

    chosen = corpus.select(samples, ["notes-*", "chat"])

    assert [s.name for s in chosen] == ["chat", "notes-1", "notes-2"]
    assert corpus.select(samples, []) == samples
    with pytest.raises(CorpusError, match=r"no sample matches 'mail' \(there are: chat, email"):
        corpus.select(samples, ["mail"])


# --- the command line ------------------------------------------------------------------------


def _args(*argv: str) -> Any:
    return build_parser().parse_args(["bench", *argv])


def test_options(tmp_path: Path) -> None:
    path = tmp_path / "mine.txt"
    path.write_text("my text\n", encoding="utf-8")

    options = options_from(
        _args("--models", "a, b", "--runs", "2", "--file", str(path), "--samples", "chat,mine-*")
    )

    assert (options.models, options.runs) == (["a", "b"], 2)
    assert [s.name for s in options.samples] == ["chat", "mine-1"]


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--models", " , "], EXIT_USAGE, "--models: give at least one model id"),
        (["--models", "a,b,a"], EXIT_USAGE, "--models: a is listed twice"),
        (["--models", "a", "--samples", "nope"], EXIT_USAGE, "--samples: no sample matches"),
        (["--models", "a", "--file", "/nonexistent/x.txt"], EXIT_BAD_INPUT, "cannot read"),
        (["--models", "a", "--json", "/nonexistent/x.json"], EXIT_USAGE, "--json: cannot write"),
    ],
)
def test_bad_options(argv: list[str], code: int, message: str) -> None:
    with pytest.raises(answers.Failure) as caught:
        options_from(_args(*argv))

    assert caught.value.exit_code == code
    assert str(caught.value).startswith(message)


def test_models_are_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["bench"])

    assert caught.value.code == EXIT_USAGE
    assert "the following arguments are required: --models" in capsys.readouterr().err


def test_exit_statuses_are_those_of_pollex_polish() -> None:
    assert (EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_UNREACHABLE) == (0, 1, 2, 3)
    assert (EXIT_AUTH, EXIT_BAD_INPUT, EXIT_UPSTREAM) == (4, 5, 6)


@pytest.mark.parametrize(
    ("status", "body", "code", "message", "down"),
    [
        (
            400,
            b'{"error": "text: longer than 9 characters"}',
            5,
            "text: longer than 9 characters",
            False,
        ),
        (413, b'{"error": "request body too large"}', 5, "request body too large", False),
        (503, b'{"error": "no backend could serve"}', 6, "no backend could serve", True),
        (502, b"", 6, "HTTP 502", False),
        (429, b'{"error": "rate limit exceeded"}', 1, "rate limit exceeded (HTTP 429)", False),
    ],
)
def test_failed_requests_by_status(
    status: int, body: bytes, code: int, message: str, down: bool
) -> None:
    failure = measure.classify(status, body)

    assert isinstance(failure, measure.RequestFailed)
    assert (failure.exit_code, str(failure), failure.down) == (code, message, down)


def test_auth_refusal_stops_the_bench() -> None:
    failure = measure.classify(401, b'{"error": "invalid API key"}')

    assert not isinstance(failure, measure.RequestFailed)
    assert (failure.exit_code, str(failure)) == (EXIT_AUTH, "invalid API key")


@pytest.mark.parametrize(
    ("value", "seconds"), [("7", 7.0), (None, 1.0), ("soon", 1.0), ("nan", 1.0), ("-3", 0.0)]
)
def test_retry_after(value: str | None, seconds: float) -> None:
    assert measure.retry_after(value) == seconds


# --- whole runs against pollex on loopback ---------------------------------------------------


async def test_two_backends_compared(pollex: Any, ollama: Any) -> None:
    client = await pollex(mock=True, ollama_url=ollama.url)

    code, out, err = await run_bench(url_of(client), [OLLAMA, "mock"], runs=2, warmup=True)

    assert (code, err) == (EXIT_OK, "")
    tables = out.split("\n\n")
    for title, table in zip(["one (11 chars)", "two (17 chars)"], tables, strict=False):
        rows = table.splitlines()
        assert rows[0] == title
        assert rows[1].startswith("  model         ok   TTFT ")
        assert rows[2].startswith(f"  {OLLAMA}  2/2  ") and rows[2].endswith(" 30     4.0")
        assert rows[3].startswith("  mock          2/2  ") and rows[3].endswith(" -")
        assert rows[4].startswith(f"  mock vs {OLLAMA}: TTFT {TIMES}")
    summary = tables[2].splitlines()
    assert (
        summary[0] == f"Compared with {OLLAMA} (ratios of medians, geometric mean over 2 samples):"
    )
    assert summary[1].endswith("tokens/s n/a (mock did not report it)")
    assert summary[2] == "8 requests: 8 ok, 0 failed"
    # The warm-up and every timed run reached Ollama, pinned: none of mock's went there.
    assert len(ollama.fake.requests) == 1 + 2 * 2


async def test_json_has_every_run_and_the_summaries(pollex: Any, ollama: Any) -> None:
    client = await pollex(mock=True, ollama_url=ollama.url)

    code, out, err = await run_bench(url_of(client), [OLLAMA, "mock"], runs=2, json_out="-")

    assert code == EXIT_OK
    assert "8 requests: 8 ok, 0 failed" in err  # the report moved to stderr
    document = json.loads(out)
    assert set(document) == {
        "url", "mode", "runs", "warmup", "models", "samples", "summary", "exit_code", "error"
    }  # fmt: skip
    assert document["models"] == [{"id": OLLAMA, "down": None}, {"id": "mock", "down": None}]
    assert (document["mode"], document["runs"], document["exit_code"]) == ("timing", 2, 0)
    first = document["samples"][0]
    assert (first["name"], first["chars"], first["source"]) == ("one", 11, "test")
    assert [(r["model"], r["run"]) for r in first["runs"]] == [
        (OLLAMA, 1), ("mock", 1), (OLLAMA, 2), ("mock", 2)
    ]  # fmt: skip
    for run in first["runs"]:
        assert set(run) == {
            "model", "run", "ttft_s", "total_s", "output_chars", "tokens_per_second", "error"
        }  # fmt: skip
        assert 0 < run["ttft_s"] <= run["total_s"]
        assert run["error"] is None
    assert [r["output_chars"] for r in first["runs"]] == [30, len(tidy("i goes home"))] * 2
    assert [r["tokens_per_second"] for r in first["runs"]] == [4.0, None] * 2
    ollama_summary = first["summary"][OLLAMA]
    assert (ollama_summary["ok"], ollama_summary["failed"]) == (2, 0)
    assert ollama_summary["tokens_per_second"] == {"median": 4.0, "min": 4.0, "max": 4.0}
    assert set(ollama_summary["total_s"]) == {"median", "min", "max"}
    assert first["summary"]["mock"]["tokens_per_second"] is None
    (vs,) = first["vs"]
    assert (vs["model"], vs["base"], vs["tokens_per_second"]) == ("mock", OLLAMA, None)
    assert vs["ttft"] > 0 and vs["total"] > 0
    (summary,) = document["summary"]
    assert summary["total"] == pytest.approx(
        math.sqrt(
            document["samples"][0]["vs"][0]["total"] * document["samples"][1]["vs"][0]["total"]
        )
    )


async def test_a_model_that_is_down_is_reported_and_the_rest_measured(pollex: Any) -> None:
    client = await pollex(mock=True, ollama_url=closed_port_url())

    code, out, err = await run_bench(url_of(client), ["mock", OLLAMA], runs=1, samples=TINY[:1])

    assert code == EXIT_UPSTREAM
    assert err.startswith(f"pollex: {OLLAMA} is down: ")
    rows = out.splitlines()
    assert rows[2].startswith("  mock          1/1  ")
    assert rows[3].startswith(f"  {OLLAMA}  down: ")
    assert f"{OLLAMA} vs mock: nothing to compare ({OLLAMA}: no run succeeded)" in out
    assert out.endswith(f"; {OLLAMA} is down\n")


async def test_a_model_down_after_the_first_probe_gets_no_requests(
    pollex: Any, ollama: Any
) -> None:
    ollama.fake.state = "hang"  # probes time out: pollex lists it as unavailable
    client = await pollex(mock=True, ollama_url=ollama.url, probe_timeout_s=0.05)
    for _ in range(100):
        models = await (await client.get("/api/models")).json()
        if not models[0]["available"]:
            break
        await asyncio.sleep(0.01)

    code, out, err = await run_bench(url_of(client), [OLLAMA, "mock"], runs=1, samples=TINY[:1])

    assert code == EXIT_UPSTREAM
    assert err == f"pollex: {OLLAMA} is down: pollex lists it as unavailable\n"
    assert ollama.fake.requests == []
    assert "1 request: 1 ok, 0 failed" in out


async def test_unknown_model_and_a_failure_mid_answer(pollex: Any, ollama: Any) -> None:
    ollama.fake.mid_stream_error = True
    client = await pollex(mock=True, ollama_url=ollama.url)

    code, out, err = await run_bench(url_of(client), ["mock", OLLAMA, "gpt-4o"], runs=1)

    assert code == EXIT_BAD_INPUT  # pollex refused something: it takes precedence
    assert err.splitlines() == [
        f"pollex: gpt-4o is down: unknown model (pollex has {OLLAMA}, mock)",
        f"pollex: {OLLAMA}, one, run 1: ollama reported an error",
        f"pollex: {OLLAMA}, two, run 1: ollama reported an error",
    ]
    assert f"  {OLLAMA}  0/1  -" in out
    assert "4 requests: 2 ok, 2 failed; gpt-4o is down" in out


async def test_text_too_long_fails_that_sample_only(pollex: Any) -> None:
    client = await pollex(mock=True, max_text_chars=12)

    code, out, err = await run_bench(url_of(client), ["mock"], runs=1)

    assert code == EXIT_BAD_INPUT
    assert err == "pollex: mock, two, run 1: text: longer than 12 characters\n"
    assert "  mock   1/1" in out and "  mock   0/1" in out


async def test_quality_shows_the_outputs_side_by_side(pollex: Any, ollama: Any) -> None:
    client = await pollex(mock=True, ollama_url=ollama.url)

    code, out, err = await run_bench(
        url_of(client), ["mock", OLLAMA], samples=TINY[:1], quality=True, width=60, json_out="-"
    )

    assert (code, "TTFT" in err) == (EXIT_OK, False)
    assert err.splitlines() == [
        "── one (11 chars) " + "─" * 42,
        "i goes home",
        "",
        "mock" + " " * 24 + " │ qwen2.5:1.5b",
        "────" + " " * 24 + " │ ────────────",
        "I goes home." + " " * 16 + " │ I went to the store",
        " " * 28 + " │ yesterday.",
        "",
        "2 requests: 2 ok, 0 failed",
    ]
    document = json.loads(out)
    assert document["mode"] == "quality"
    assert document["samples"][0]["text"] == "i goes home"
    assert document["samples"][0]["outputs"] == {
        "mock": {"polished": "I goes home.", "error": None},
        OLLAMA: {"polished": "I went to the store yesterday.", "error": None},
    }


async def test_wrong_key_stops_at_once(pollex: Any) -> None:
    client = await pollex(mock=True, api_key="k")

    missing = await run_bench(url_of(client), ["mock"])
    right = await run_bench(url_of(client), ["mock"], api_key="k", runs=1)

    assert missing == (EXIT_AUTH, "", "pollex: missing API key\n")
    assert right[0] == EXIT_OK


async def test_unreachable_and_invalid_url() -> None:
    url = closed_port_url()

    assert await run_bench(url, ["mock"]) == (
        EXIT_UNREACHABLE,
        "",
        f"pollex: cannot reach pollex at {url}: Connection refused\n",
    )
    assert await run_bench("localhost", ["mock"]) == (
        EXIT_USAGE,
        "",
        "pollex: invalid URL: localhost\n",
    )


# --- a hand-made server, for what a real pollex does not do on demand -------------------------


def _sse(*events: tuple[str, dict[str, Any]]) -> bytes:
    return b"".join(f"event: {e}\ndata: {json.dumps(d)}\n\n".encode() for e, d in events)


async def _serve(aiohttp_server: Any, polish: Any, models: Any = None) -> str:
    async def listed(request: web.Request) -> web.Response:
        return web.json_response([{"id": "m", "name": "M", "provider": "mock", "available": True}])

    app = web.Application()
    app.router.add_get("/api/models", models or listed)
    app.router.add_post("/api/polish", polish)
    return str((await aiohttp_server(app)).make_url("")).rstrip("/")


async def test_rate_limit_is_waited_out(aiohttp_server: Any) -> None:
    answers = [429, 429, 200]

    async def polish(request: web.Request) -> web.StreamResponse:
        if answers.pop(0) == 429:
            return web.json_response(
                {"error": "rate limit exceeded"}, status=429, headers=POLLEX_429
            )
        done = {"polished": "Fine.", "usage": {"tokens_per_second": 12.5}}
        body = _sse(("delta", {"text": "Fine."}), ("done", done))
        return web.Response(body=body, content_type="text/event-stream")

    url = await _serve(aiohttp_server, polish)

    code, out, err = await run_bench(url, ["m"], runs=1, samples=TINY[:1])

    assert code == EXIT_OK
    assert err == "pollex: rate limited, waiting 0 s (a valid API key is never limited)\n" * 2
    assert "  m      1/1" in out and out.splitlines()[2].endswith(" 5      12.5")


async def test_rate_limited_for_good_fails_the_request(aiohttp_server: Any) -> None:
    async def polish(request: web.Request) -> web.Response:
        return web.json_response({"error": "rate limit exceeded"}, status=429, headers=POLLEX_429)

    url = await _serve(aiohttp_server, polish)

    code, _, err = await run_bench(url, ["m"], runs=1, samples=TINY[:1])

    assert code == EXIT_FAILURE
    assert err.splitlines()[-1] == "pollex: m, one, run 1: rate limit exceeded (HTTP 429)"
    assert err.count("waiting") == measure.RATE_LIMITED_TRIES - 1


async def test_not_a_pollex(aiohttp_server: Any) -> None:
    async def models(request: web.Request) -> web.Response:
        return web.Response(text="<html>hello</html>", content_type="text/html")

    url = await _serve(aiohttp_server, models, models)

    assert await run_bench(url, ["m"]) == (
        EXIT_FAILURE,
        "",
        f"pollex: {url} is not a pollex: GET /api/models did not answer a list of models\n",
    )


async def test_a_stream_broken_off_stops_the_bench_after_what_worked(aiohttp_server: Any) -> None:
    calls = 0

    async def polish(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(_sse(("delta", {"text": "Fine."})))
        if calls == 1:
            await response.write(_sse(("done", {"polished": "Fine."})))
        return response

    url = await _serve(aiohttp_server, polish)

    code, out, err = await run_bench(url, ["m"], runs=2)  # the second run of the first sample

    assert code == EXIT_UNREACHABLE
    assert out.startswith("one (11 chars)\n") and out.endswith("\n1 request: 1 ok, 0 failed\n")
    assert err == "pollex: pollex closed the stream before the answer was complete\n"


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"event: delta\ndata: nope\n\n", "text/event-stream", "invalid delta event"),
        (b'{"polished": "x"}', "application/json", "m, one, run 1: pollex did not answer with"),
    ],
)
async def test_answers_that_are_not_pollexs(
    aiohttp_server: Any, body: bytes, content_type: str, message: str
) -> None:
    async def polish(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type)

    url = await _serve(aiohttp_server, polish)

    result = await run_bench(url, ["m"], runs=1, samples=TINY[:1])

    assert result[0] == EXIT_FAILURE
    assert message in result[2].splitlines()[0]


# --- as a command ------------------------------------------------------------------------------


async def run_command(*args: str, stderr: Any = asyncio.subprocess.PIPE) -> tuple[int, str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("POLLEX_")}
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "pollex", "bench", *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
        env=clean,
    )
    out, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode is not None
    return process.returncode, out.decode(), (err or b"").decode()


async def test_command_with_own_file_and_json_file(pollex: Any, tmp_path: Path) -> None:
    client = await pollex(mock=True)
    texts = tmp_path / "mine.txt"
    texts.write_text("i goes home\n\nwe has  a meeting\n", encoding="utf-8")
    result = tmp_path / "bench.json"

    code, out, err = await run_command(
        *("--url", url_of(client), "--models", "mock", "--runs", "1", "--file", str(texts)),
        *("--samples", "mine-*", "--json", str(result)),
    )

    assert (code, err) == (EXIT_OK, "")
    assert out.startswith("mine-1 (11 chars)\n")
    assert out.endswith("2 requests: 2 ok, 0 failed\n")
    document = json.loads(result.read_text(encoding="utf-8"))
    assert [s["name"] for s in document["samples"]] == ["mine-1", "mine-2"]


async def test_command_bad_file_is_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text("not json\n", encoding="utf-8")

    code, out, err = await run_command("--models", "mock", "--file", str(path))

    assert (code, out, err) == (EXIT_BAD_INPUT, "", f"pollex: {path}, line 1: not JSON\n")


async def test_progress_goes_to_a_terminal_stderr_only(pollex: Any) -> None:
    client = await pollex(mock=True)
    with Terminal() as terminal:
        code, out, _ = await run_command(
            "--url", url_of(client), "--models", "mock", "--runs", "1", "--samples", "chat",
            stderr=terminal.fd,
        )  # fmt: skip
        shown = terminal.shown()

    assert code == EXIT_OK
    assert "\x1b" not in out
    assert "pollex: [1/1] chat · mock · run 1".encode() in shown
    assert shown.endswith(b"\r\x1b[K")  # the line is cleared at the end


def test_an_answer_that_is_not_pollex_is_named_so() -> None:
    """A proxy's 502 page in front of a pollex that is gone is not a model that is down:
    it stops the bench, named for what it is (as `pollex polish` says it)."""
    url = "http://127.0.0.1:8090"
    failure = measure.classify(502, b"<html>Bad Gateway</html>", {"Server": "nginx"}, url)
    assert not isinstance(failure, measure.RequestFailed)
    assert failure.exit_code == EXIT_UNREACHABLE
    assert str(failure) == f"not a pollex server at {url} (HTTP 502)"
    pollex_own = measure.classify(503, b'{"error": "no backend"}', {"X-Request-ID": "a" * 32})
    assert isinstance(pollex_own, measure.RequestFailed) and pollex_own.down
