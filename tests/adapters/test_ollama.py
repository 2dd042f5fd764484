"""OllamaAdapter: request shape and answers (aioresponses), then NDJSON over real sockets."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from adapter_calls import CHAT, SYSTEM, TEXT, collect, collect_error
from aioresponses import aioresponses
from fakes import WORDS, closed_port_url
from yarl import URL

from pollex.adapters import Completion, Finish, ProbeResult, Usage
from pollex.adapters.ollama import OllamaAdapter
from pollex.errors import UpstreamError

BASE = "http://ollama.test:11434"
CHAT_URL = URL(f"{BASE}/api/chat")
MODEL = "qwen2.5:1.5b"
# The fake's final object: prompt_eval_count 26, eval_count 7 in 1.75 s.
FAKE_FINISH = Finish("stop", Usage(26, len(WORDS), 4.0))
NDJSON = {"Content-Type": "application/x-ndjson"}


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


# --- identity --------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [MODEL, "llama3", "hf.co/org/model:Q4_K_M"])
async def test_identity(session: aiohttp.ClientSession, model: str) -> None:
    adapter = OllamaAdapter(session, BASE, model, first_token_timeout_s=3.0)
    assert (adapter.id, adapter.name, adapter.provider) == (model, f"Ollama ({model})", "ollama")
    assert adapter.first_token_timeout_s == 3.0


async def test_default_model(session: aiohttp.ClientSession) -> None:
    assert OllamaAdapter(session, BASE).name == "Ollama (qwen2.5:1.5b)"


# --- request shape (aioresponses) -----------------------------------------------------------


def expected_body(*, stream: bool) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TEXT}],
        "stream": stream,
        "options": {"temperature": 0.0, "num_predict": 64},
    }


@pytest.mark.parametrize("base", [BASE, BASE + "/"])
async def test_stream_request_shape(
    mock: aioresponses, session: aiohttp.ClientSession, base: str
) -> None:
    mock.post(str(CHAT_URL), body=line("I went") + line(" home") + final(), headers=NDJSON)
    chunks, finish = await collect(OllamaAdapter(session, base, MODEL))
    [call] = mock.requests[("POST", CHAT_URL)]
    assert call.kwargs["json"] == expected_body(stream=True)
    assert chunks == ["I went", " home"]
    assert finish == Finish("stop", Usage(26, 10, 5.0))


async def test_complete_request_shape_and_answer(
    mock: aioresponses, session: aiohttp.ClientSession
) -> None:
    mock.post(str(CHAT_URL), body=line("I went home.", done=True, done_reason="stop"))
    result = await OllamaAdapter(session, BASE, MODEL).complete(CHAT)
    [call] = mock.requests[("POST", CHAT_URL)]
    assert call.kwargs["json"] == expected_body(stream=False)
    assert result == Completion("I went home.", Finish("stop", None))


@pytest.mark.parametrize(
    ("last", "finish"),
    [
        pytest.param(final(), Finish("stop", Usage(26, 10, 5.0)), id="stop"),
        pytest.param(final(done_reason="length"), Finish("length", Usage(26, 10, 5.0))),
        pytest.param(final(done_reason=None), Finish("stop", Usage(26, 10, 5.0)), id="no-reason"),
        pytest.param(line(done=True), Finish("stop", None), id="no-metrics"),
        pytest.param(final(eval_duration=0), Finish("stop", Usage(26, 10, None)), id="no-time"),
        pytest.param(final(prompt_eval_count=None), Finish("stop", Usage(0, 10, 5.0))),
        pytest.param(
            final(eval_count=3, eval_duration=999_000_000), Finish("stop", Usage(26, 3, 3.0))
        ),
    ],
)
async def test_stream_finish(
    mock: aioresponses, session: aiohttp.ClientSession, last: bytes, finish: Finish
) -> None:
    mock.post(str(CHAT_URL), body=line("I") + last, headers=NDJSON)
    chunks, got = await collect(OllamaAdapter(session, BASE, MODEL))
    assert chunks == ["I"]
    assert got == finish


async def test_stream_final_object_may_carry_text(
    mock: aioresponses, session: aiohttp.ClientSession
) -> None:
    mock.post(str(CHAT_URL), body=line("I") + line(" went", done=True), headers=NDJSON)
    chunks, finish = await collect(OllamaAdapter(session, BASE, MODEL))
    assert (chunks, finish.reason) == (["I", " went"], "stop")


async def test_stream_done_without_trailing_newline(
    mock: aioresponses, session: aiohttp.ClientSession
) -> None:
    """upstreams.md §5.2: a last fragment without `\\n` is fine if it is the done object."""
    mock.post(str(CHAT_URL), body=line("I") + final().rstrip(b"\n"), headers=NDJSON)
    chunks, finish = await collect(OllamaAdapter(session, BASE, MODEL))
    assert (chunks, finish.reason) == (["I"], "stop")


# --- non-200 answers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "message", "failover", "marks_down"),
    [
        pytest.param(
            404, {"error": f"model '{MODEL}' not found"}, f"model '{MODEL}' not found", True, True
        ),
        pytest.param(
            500, {"error": "llama runner process has terminated"}, "runner process", True, True
        ),
        pytest.param(
            503,
            {"error": "server busy, please try again.  maximum pending requests exceeded"},
            "server busy",
            True,
            True,
        ),
        pytest.param(502, "<html><h1>502 Bad Gateway</h1></html>", "Bad Gateway", True, True),
        pytest.param(400, {"error": "model is required"}, "model is required", False, False),
        pytest.param(
            400, {"error": {"message": "openai shape"}}, "openai shape", False, False, id="dict"
        ),
        pytest.param(400, "", "empty error body", False, False, id="empty"),
    ],
)
@pytest.mark.parametrize("mode", ["stream", "complete"])
async def test_status_error(
    mock: aioresponses,
    session: aiohttp.ClientSession,
    mode: str,
    status: int,
    body: Any,
    message: str,
    failover: bool,
    marks_down: bool,
) -> None:
    adapter = OllamaAdapter(session, BASE, MODEL)
    text = body if isinstance(body, str) else json.dumps(body)
    mock.post(str(CHAT_URL), status=status, body=text)
    with pytest.raises(UpstreamError) as info:
        if mode == "stream":
            await collect(adapter)
        else:
            await adapter.complete(CHAT)
    error = info.value
    assert message in str(error)
    assert str(error).startswith("ollama: ")
    assert str(error).endswith(f"(HTTP {status})")
    assert (error.kind, error.failover, error.marks_down) == ("status", failover, marks_down)


@pytest.mark.parametrize(
    ("state", "status", "message"),
    [
        ("missing_model", 404, f"ollama: model '{MODEL}' not found (HTTP 404)"),
        ("error500", 500, "ollama: llama runner process has terminated (HTTP 500)"),
    ],
)
@pytest.mark.parametrize("mode", ["stream", "complete"])
async def test_status_error_over_the_wire(
    session: aiohttp.ClientSession, ollama: Any, mode: str, state: str, status: int, message: str
) -> None:
    ollama.fake.state = state
    adapter = OllamaAdapter(session, ollama.url, MODEL)
    with pytest.raises(UpstreamError) as info:
        if mode == "stream":
            await collect(adapter)
        else:
            await adapter.complete(CHAT)
    assert str(info.value) == message
    assert (info.value.failover, info.value.marks_down) == (True, True)


# --- malformed 200 answers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "kind", "message"),
    [
        pytest.param("<html>proxy error</html>", "protocol", "not JSON", id="html"),
        pytest.param('{"message": ', "protocol", "not JSON", id="truncated-json"),
        pytest.param("[]", "protocol", "not an object", id="json-list"),
        pytest.param('{"done": true}', "protocol", "empty content", id="no-message"),
        pytest.param(
            '{"message": {"role": "assistant", "content": ""}, "done": true}',
            "protocol",
            "empty content",
            id="empty-content",
        ),
        pytest.param('{"message": "text", "done": true}', "protocol", "empty content"),
        pytest.param('{"error": "boom"}', "status", "ollama: boom", id="error-in-200"),
    ],
)
async def test_complete_malformed(
    mock: aioresponses, session: aiohttp.ClientSession, body: str, kind: str, message: str
) -> None:
    mock.post(str(CHAT_URL), body=body)
    with pytest.raises(UpstreamError) as info:
        await OllamaAdapter(session, BASE, MODEL).complete(CHAT)
    assert info.value.kind == kind
    assert message in str(info.value)


async def test_complete_answer_too_large(
    mock: aioresponses, session: aiohttp.ClientSession
) -> None:
    mock.post(str(CHAT_URL), body=line("x" * 200, done=True))
    with pytest.raises(UpstreamError, match="too large") as info:
        await OllamaAdapter(session, BASE, MODEL, max_line_bytes=100).complete(CHAT)
    assert (info.value.kind, info.value.marks_down) == ("protocol", False)


@pytest.mark.parametrize(
    ("body", "before", "message"),
    [
        pytest.param(b"<html>proxy error</html>", [], "not JSON", id="html"),
        pytest.param(line("I") + b"not json\n" + final(), ["I"], "not JSON", id="garbage-line"),
        pytest.param(line("I") + b"[1]\n" + final(), ["I"], "not an object", id="json-list"),
        pytest.param(line("I") + line(" went"), ["I", " went"], "ended before done", id="no-done"),
        pytest.param(
            line("I") + line(" went").rstrip(b"\n"),
            ["I", " went"],
            "ended before done",
            id="fragment-not-done",
        ),
        pytest.param(line("I") + b'{"done": tr', ["I"], "not JSON", id="truncated-fragment"),
        pytest.param(b"", [], "ended before done", id="empty"),
    ],
)
async def test_stream_protocol_errors(
    mock: aioresponses,
    session: aiohttp.ClientSession,
    body: bytes,
    before: list[str],
    message: str,
) -> None:
    mock.post(str(CHAT_URL), body=body, headers=NDJSON)
    chunks, error = await collect_error(OllamaAdapter(session, BASE, MODEL))
    assert chunks == before
    assert error.kind == "protocol"
    assert message in str(error)


# --- probe -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("ok", ProbeResult(True)),
        ("missing_model", ProbeResult(False, "ollama model not found")),
    ],
)
async def test_probe(
    session: aiohttp.ClientSession, ollama: Any, state: str, expected: ProbeResult
) -> None:
    ollama.fake.state = state
    assert await OllamaAdapter(session, ollama.url, MODEL).probe() == expected
    assert ollama.fake.probes == 1


async def test_probe_unreachable(session: aiohttp.ClientSession) -> None:
    result = await OllamaAdapter(session, closed_port_url(), MODEL).probe()
    assert result == ProbeResult(False, "ollama unreachable")


async def test_probe_after_the_server_went_away(
    session: aiohttp.ClientSession, ollama: Any
) -> None:
    adapter = OllamaAdapter(session, ollama.url, MODEL)
    assert (await adapter.probe()).available
    await ollama.stop()
    assert await adapter.probe() == ProbeResult(False, "ollama unreachable")


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
    assert await OllamaAdapter(session, BASE, model).probe() == expected


async def test_probe_root_not_200(mock: aioresponses, session: aiohttp.ClientSession) -> None:
    mock.get(f"{BASE}/", status=502, body="bad gateway")
    result = await OllamaAdapter(session, BASE, MODEL).probe()
    assert result == ProbeResult(False, "ollama answered HTTP 502")


# --- streaming over the wire -----------------------------------------------------------------


@pytest.mark.parametrize("crlf", [False, True])
async def test_stream(session: aiohttp.ClientSession, ollama: Any, crlf: bool) -> None:
    ollama.fake.crlf = crlf
    chunks, finish = await collect(OllamaAdapter(session, ollama.url, MODEL))
    assert chunks == list(WORDS)
    assert finish == FAKE_FINISH
    assert ollama.fake.requests == [expected_body(stream=True)]
    assert ollama.fake.streams_completed == 1


async def test_complete_over_the_wire(session: aiohttp.ClientSession, ollama: Any) -> None:
    result = await OllamaAdapter(session, ollama.url, MODEL).complete(CHAT)
    assert result == Completion("".join(WORDS), FAKE_FINISH)
    assert ollama.fake.requests == [expected_body(stream=False)]


async def test_stream_is_not_buffered(session: aiohttp.ClientSession, ollama: Any) -> None:
    ollama.fake.gate = asyncio.Event()
    finish = Finish()
    stream = OllamaAdapter(session, ollama.url, MODEL).stream(CHAT, finish)
    first = await asyncio.wait_for(stream.__anext__(), 2)
    assert first == WORDS[0]
    assert not ollama.fake.gate.is_set()
    ollama.fake.gate.set()
    assert [first] + [chunk async for chunk in stream] == list(WORDS)
    assert finish == FAKE_FINISH


async def test_stream_mid_stream_error(session: aiohttp.ClientSession, ollama: Any) -> None:
    ollama.fake.mid_stream_error = True
    chunks, error = await collect_error(OllamaAdapter(session, ollama.url, MODEL))
    assert chunks == list(WORDS[:2])
    assert str(error) == "ollama: an error was encountered while running the model"
    assert (error.kind, error.marks_down) == ("status", False)


@pytest.mark.parametrize("cut_after", [1, 3, len(WORDS)])
async def test_stream_cut(session: aiohttp.ClientSession, ollama: Any, cut_after: int) -> None:
    ollama.fake.cut_after = cut_after
    chunks, error = await collect_error(OllamaAdapter(session, ollama.url, MODEL))
    # aiohttp drops what it buffered when the cut arrives with it: a prefix, never more.
    assert chunks == list(WORDS[: len(chunks)])
    assert error.kind == "protocol"


async def test_stream_line_too_long(mock: aioresponses, session: aiohttp.ClientSession) -> None:
    mock.post(str(CHAT_URL), body=line("I") + b'{"message": "' + b"x" * 300, headers=NDJSON)
    adapter = OllamaAdapter(session, BASE, MODEL, max_line_bytes=200)
    _, error = await collect_error(adapter)
    assert (error.kind, error.marks_down) == ("protocol", False)
    assert "too long" in str(error)


# --- cancellation ----------------------------------------------------------------------------


async def test_closing_the_stream_closes_the_upstream(
    session: aiohttp.ClientSession, ollama: Any
) -> None:
    ollama.fake.chunk_delay = 0.05
    stream = OllamaAdapter(session, ollama.url, MODEL).stream(CHAT, Finish())
    assert await stream.__anext__() == WORDS[0]
    await stream.aclose()
    await asyncio.wait_for(ollama.fake.cancelled.wait(), 2)
    assert ollama.fake.streams_completed == 0


async def test_cancelling_the_consumer_closes_the_upstream(
    session: aiohttp.ClientSession, ollama: Any
) -> None:
    ollama.fake.chunk_delay = 0.05
    got_first = asyncio.Event()

    async def consume() -> None:
        async for _ in OllamaAdapter(session, ollama.url, MODEL).stream(CHAT, Finish()):
            got_first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_first.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(ollama.fake.cancelled.wait(), 2)
    assert ollama.fake.streams_completed == 0


async def test_cancelling_complete_closes_the_upstream(
    session: aiohttp.ClientSession, ollama: Any
) -> None:
    ollama.fake.state = "hang"  # accepts the request, never answers
    task = asyncio.create_task(OllamaAdapter(session, ollama.url, MODEL).complete(CHAT))
    for _ in range(400):  # until the fake has the request (at most 2 s)
        if ollama.fake.requests:
            break
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(ollama.fake.cancelled.wait(), 2)
