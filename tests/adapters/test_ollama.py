"""OllamaAdapter's own dialect: NDJSON objects and their final metrics, and the model probe.

What every HTTP adapter does the same way (request, status errors, cuts, cancellation,
reachability) is in test_http_adapters.py.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from fakes import WORDS
from helpers import collect, collect_error
from helpers import ollama as make_ollama
from structlog.testing import capture_logs

from pollex.adapters import Finish, ProbeResult, Usage
from pollex.adapters.ollama import OllamaAdapter

BASE = "http://ollama.test:11434"
CHAT_URL = f"{BASE}/api/chat"
MODEL = "qwen2.5:1.5b"
NDJSON = {"Content-Type": "application/x-ndjson"}


def adapter(session: aiohttp.ClientSession, url: str = BASE, model: str = MODEL) -> OllamaAdapter:
    return make_ollama(session, url, model)


def line(content: str = "", *, done: bool = False, **extra: Any) -> bytes:
    obj = {"model": MODEL, "message": {"role": "assistant", "content": content}, "done": done}
    return json.dumps({**obj, **extra}).encode() + b"\n"


def final(**extra: Any) -> bytes:
    metrics = {
        "done_reason": "stop",
        "prompt_eval_count": 26,
        "eval_count": 10,
        "eval_duration": 2_000_000_000,
    }
    return line(done=True, **{**metrics, **extra})


# --- the final object ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("last", "finish"),
    [
        pytest.param(final(), Finish("stop", Usage(26, 10, 5.0), ended=True), id="stop"),
        pytest.param(final(done_reason="length"), Finish("length", Usage(26, 10, 5.0), ended=True)),
        pytest.param(
            final(done_reason=None), Finish("stop", Usage(26, 10, 5.0), ended=True), id="no-reason"
        ),
        pytest.param(line(done=True), Finish("stop", None, ended=True), id="no-metrics"),
        pytest.param(
            final(eval_duration=0), Finish("stop", Usage(26, 10, None), ended=True), id="no-time"
        ),
        pytest.param(final(prompt_eval_count=None), Finish("stop", Usage(0, 10, 5.0), ended=True)),
        pytest.param(
            final(eval_count=3, eval_duration=999_000_000),
            Finish("stop", Usage(26, 3, 3.0), ended=True),
        ),
    ],
)
async def test_stream_finish(
    mock: aioresponses, session: aiohttp.ClientSession, last: bytes, finish: Finish
) -> None:
    mock.post(CHAT_URL, body=line("I") + last, headers=NDJSON)
    chunks, got = await collect(adapter(session))
    assert chunks == ["I"]
    assert got == finish


async def test_stream_final_object_may_carry_text(
    mock: aioresponses, session: aiohttp.ClientSession
) -> None:
    mock.post(CHAT_URL, body=line("I") + line(" went", done=True), headers=NDJSON)
    chunks, finish = await collect(adapter(session))
    assert (chunks, finish) == (["I", " went"], Finish("stop", None, ended=True))


async def test_stream_done_without_trailing_newline(
    mock: aioresponses, session: aiohttp.ClientSession
) -> None:
    """docs/upstreams.md: a last fragment without `\\n` is fine if it is the done object."""
    mock.post(CHAT_URL, body=line("I") + final().rstrip(b"\n"), headers=NDJSON)
    chunks, finish = await collect(adapter(session))
    assert (chunks, finish) == (["I"], Finish("stop", Usage(26, 10, 5.0), ended=True))


async def test_stream_nothing_after_done(
    mock: aioresponses, session: aiohttp.ClientSession
) -> None:
    """The done object ends the answer: a line after it is never read as text."""
    mock.post(CHAT_URL, body=line("I") + final() + line(" late"), headers=NDJSON)
    chunks, finish = await collect(adapter(session))
    assert (chunks, finish) == (["I"], Finish("stop", Usage(26, 10, 5.0), ended=True))


async def test_stream_crlf_over_the_wire(session: aiohttp.ClientSession, ollama: Any) -> None:
    """Lines ending in `\\r\\n` (test_http_adapters streams the fake's `\\n` lines)."""
    ollama.fake.crlf = True
    chunks, finish = await collect(adapter(session, ollama.url))
    assert chunks == list(WORDS)
    assert finish == Finish("stop", Usage(26, len(WORDS), 4.0), ended=True)
    assert ollama.fake.streams_completed == 1


# --- broken NDJSON ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "before", "message", "logged"),
    [
        pytest.param(
            line("I") + b"not json\n" + final(),
            ["I"],
            "malformed upstream stream",
            "b'not json'",
            id="garbage-line",
        ),
        pytest.param(
            line("I") + b"[1]\n" + final(),
            ["I"],
            "ollama sent JSON that is not an object",
            None,
            id="json-list",
        ),
        pytest.param(
            line("I") + line(" went").rstrip(b"\n"),
            ["I", " went"],
            "ollama stream ended before done",
            None,
            id="fragment-not-done",
        ),
        pytest.param(
            line("I") + b'{"done": tr',
            ["I"],
            "malformed upstream stream",
            "b'{\"done\": tr'",
            id="truncated-fragment",
        ),
    ],
)
async def test_stream_protocol_errors(
    mock: aioresponses,
    session: aiohttp.ClientSession,
    body: bytes,
    before: list[str],
    message: str,
    logged: str | None,
) -> None:
    """`logged`: what the upstream sent, which the debug log shows and the error does not."""
    mock.post(CHAT_URL, body=body, headers=NDJSON)
    with capture_logs() as logs:
        chunks, error = await collect_error(adapter(session))
    assert chunks == before
    assert error.kind == "protocol"
    assert str(error) == message
    malformed = [e for e in logs if e["event"] == "malformed_stream"]
    if logged is None:
        assert malformed == []
    else:
        assert [e["log_level"] for e in malformed] == ["debug"]
        assert logged in malformed[0]["detail"]


async def test_stream_error_object_in_a_200(
    mock: aioresponses, session: aiohttp.ClientSession
) -> None:
    mock.post(CHAT_URL, body=b'{"error": "boom"}\n', headers=NDJSON)
    with capture_logs() as logs:
        chunks, error = await collect_error(adapter(session))
    assert (chunks, str(error)) == ([], "ollama reported an error")  # not its words
    assert (error.kind, error.marks_down) == ("status", False)
    (reported,) = [e for e in logs if e["event"] == "upstream_reported_error"]
    assert (reported["log_level"], reported["detail"]) == ("debug", "boom")


# --- the model probe -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "tags", "expected"),
    [
        pytest.param("llama3", {"models": [{"name": "llama3:latest"}]}, ProbeResult(True)),
        pytest.param(
            MODEL,
            {"models": [{"name": "qwen2.5:7b"}]},
            ProbeResult(False, "ollama model not found"),
        ),
        pytest.param(MODEL, {"models": []}, ProbeResult(False, "ollama model not found")),
        pytest.param(MODEL, {"models": [{"name": MODEL}]}, ProbeResult(True)),
        pytest.param(MODEL, "not json", ProbeResult(True), id="tags-not-json"),
        pytest.param(MODEL, {"other": 1}, ProbeResult(True), id="tags-unknown-shape"),
    ],
)
async def test_probe_tags(
    mock: aioresponses,
    session: aiohttp.ClientSession,
    model: str,
    tags: Any,
    expected: ProbeResult,
) -> None:
    mock.get(f"{BASE}/", body="Ollama is running")
    mock.get(f"{BASE}/api/tags", body=tags if isinstance(tags, str) else json.dumps(tags))
    assert await adapter(session, model=model).probe() == expected


async def test_probe_root_not_200(mock: aioresponses, session: aiohttp.ClientSession) -> None:
    mock.get(f"{BASE}/", status=502, body="bad gateway")
    result = await adapter(session).probe()
    assert result == ProbeResult(False, "ollama answered HTTP 502")
