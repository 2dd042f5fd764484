"""`pollex polish`, run as a real subprocess against a pollex on loopback."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from fakes import closed_port_url
from helpers import Terminal, collect_events, url_of

from pollex.adapters.mock import tidy
from pollex.client.answers import (
    EXIT_AUTH,
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    EXIT_UNREACHABLE,
    EXIT_UPSTREAM,
    EXIT_USAGE,
)
from pollex.client.display import Progress, TextOutput
from pollex.client.polish import _status_failure
from pollex.parsing import SSEDecoder

TEXT = "i goes  to the store , and i buy milk"


async def run_polish(
    url: str | None, *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> tuple[int, bytes, bytes]:
    """`python -m pollex polish [--url URL] ARGS` with `stdin`; the loop keeps serving."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("POLLEX_")}
    command = [sys.executable, "-m", "pollex", "polish"]
    if url is not None:
        command += ["--url", url]
    process = await asyncio.create_subprocess_exec(
        *command,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**clean, **(env or {})},
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), 20)
    assert process.returncode is not None
    return process.returncode, out, err


# --- success: the text and nothing else -------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (TEXT + "\n", tidy(TEXT) + "\n"),
        (TEXT, tidy(TEXT)),
        ("\n\nfirst line\nsecond  line\n\n", "\n\nFirst line\nSecond line.\n\n"),
        ("windows line\r\n", "Windows line.\r\n"),
    ],
)
async def test_filter_output_is_byte_exact(pollex: Any, given: str, expected: str) -> None:
    client = await pollex(mock=True)

    code, out, err = await run_polish(url_of(client), stdin=given.encode())

    assert (code, out, err) == (0, expected.encode(), b"")


async def test_reads_file_and_env_url(pollex: Any, tmp_path: Path) -> None:
    client = await pollex(mock=True)
    source = tmp_path / "draft.txt"
    source.write_text("é  i said\n", encoding="utf-8")  # not ASCII: sent and shown as UTF-8

    code, out, err = await run_polish(None, str(source), env={"POLLEX_URL": url_of(client)})

    assert (code, out, err) == (0, "é I said.\n".encode(), b"")


async def test_json_prints_the_done_event(pollex: Any) -> None:
    client = await pollex(mock=True)

    code, out, err = await run_polish(url_of(client), "--json", stdin=TEXT.encode())

    assert (code, err) == (0, b"")
    assert out.count(b"\n") == 1
    done = json.loads(out)
    assert (done["polished"], done["model"], done["finish_reason"]) == (tidy(TEXT), "mock", "stop")


async def test_model_is_sent_as_model_id(pollex: Any, ollama: Any) -> None:
    client = await pollex(mock=True, ollama_url=ollama.url)

    code, out, _ = await run_polish(url_of(client), "--model", "mock", stdin=TEXT.encode())

    assert (code, out) == (0, tidy(TEXT).encode())
    assert ollama.fake.requests == []


# --- each failure class has its own exit status -----------------------------------------


async def test_unreachable() -> None:
    url = closed_port_url()

    code, out, err = await run_polish(url, stdin=TEXT.encode())

    assert (code, out) == (EXIT_UNREACHABLE, b"")
    assert err.decode() == f"pollex: cannot reach pollex at {url}: Connection refused\n"


async def test_auth(pollex: Any) -> None:
    client = await pollex(mock=True, api_key="k")
    url = url_of(client)

    missing = await run_polish(url, stdin=TEXT.encode())
    wrong = await run_polish(url, stdin=TEXT.encode(), env={"POLLEX_API_KEY": "nope"})
    right = await run_polish(url, "--api-key", "k", stdin=TEXT.encode())

    assert missing == (EXIT_AUTH, b"", b"pollex: missing API key\n")
    assert wrong == (EXIT_AUTH, b"", b"pollex: invalid API key\n")
    assert right == (0, tidy(TEXT).encode(), b"")


@pytest.mark.parametrize("given", [b"", b" \n\t\n"])
async def test_empty_input_is_bad_input(given: bytes) -> None:
    code, out, err = await run_polish(closed_port_url(), stdin=given)

    assert (code, out, err) == (
        EXIT_BAD_INPUT,
        b"",
        b"pollex: nothing to polish: the input is empty\n",
    )


async def test_server_refusal_is_bad_input(pollex: Any) -> None:
    client = await pollex(mock=True, max_text_chars=10)

    too_long = await run_polish(url_of(client), stdin=TEXT.encode())
    unknown = await run_polish(url_of(client), "--model", "gpt-4o", stdin=b"hi")

    assert too_long == (EXIT_BAD_INPUT, b"", b"pollex: text: longer than 10 characters\n")
    assert unknown == (EXIT_BAD_INPUT, b"", b"pollex: unknown model: gpt-4o\n")


async def test_upstream_failed(pollex: Any) -> None:
    client = await pollex(llamacpp_url=closed_port_url())

    code, out, err = await run_polish(url_of(client), stdin=TEXT.encode())

    assert (code, out) == (EXIT_UPSTREAM, b"")
    # The backend and the class of failure; not the upstream's address.
    assert err == (
        b"pollex: no backend could serve the request (llama.cpp (llama.cpp): "
        b"llama-server unreachable)\n"
    )


async def test_upstream_failed_mid_answer(pollex: Any, ollama: Any) -> None:
    ollama.fake.mid_stream_error = True
    client = await pollex(ollama_url=ollama.url)

    code, out, err = await run_polish(url_of(client), stdin=TEXT.encode())

    assert (code, out) == (EXIT_UPSTREAM, b"I went")  # what had arrived, nothing more
    # The class of failure, not the upstream's own words (they may quote the text).
    assert err == b"pollex: ollama reported an error\n"


@pytest.mark.parametrize("url", ["ftp://x", "localhost:8090", "http://", "http://x:port"])
async def test_a_url_that_is_not_http_is_a_usage_error(url: str) -> None:
    code, out, err = await run_polish(url, stdin=TEXT.encode())

    assert (code, out) == (EXIT_USAGE, b"")
    assert err.decode() == f"pollex: invalid URL: {url} (expected http://HOST[:PORT])\n"


async def serve_other(aiohttp_server: Any, status: int, body: str, content_type: str) -> str:
    """A web server that is not pollex, answering every request the same way."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=status, text=body, content_type=content_type)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return url_of(await aiohttp_server(app))


@pytest.mark.parametrize(
    ("status", "body", "content_type", "exit_code"),
    [
        (501, "<html><body><h1>501 Not Implemented</h1></body></html>", "text/html", 3),
        (502, "<html><body>Bad Gateway</body></html>", "text/html", 3),
        (503, '{"error": "maintenance"}', "application/json", 3),  # JSON, no X-Request-ID
        (404, "<html><body>Not Found</body></html>", "text/html", EXIT_FAILURE),
        (200, "<html><body>Welcome</body></html>", "text/html", EXIT_FAILURE),
    ],
)
async def test_a_server_that_is_not_pollex_is_named_so(
    aiohttp_server: Any, status: int, body: str, content_type: str, exit_code: int
) -> None:
    url = await serve_other(aiohttp_server, status, body, content_type)

    code, out, err = await run_polish(url, stdin=TEXT.encode())

    assert (code, out) == (exit_code, b"")
    detail = "HTTP 200, not an event stream" if status == 200 else f"HTTP {status}"
    assert err.decode() == f"pollex: not a pollex server at {url} ({detail})\n"


async def test_pollexs_own_503_is_still_no_model_could(pollex: Any) -> None:
    """The same status from pollex itself (JSON with an X-Request-ID) keeps its meaning."""
    client = await pollex(llamacpp_url=closed_port_url())

    code, _, err = await run_polish(url_of(client), stdin=TEXT.encode())

    assert code == EXIT_UPSTREAM
    assert err.startswith(b"pollex: no backend could serve the request")


async def test_a_stream_cut_mid_answer_says_so() -> None:
    """pollex (or the network) goes away in the middle of a chunked event stream."""
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"X-Request-ID: " + b"a" * 32 + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    events = (
        b'event: start\ndata: {"model":"m","fallback_from":null}\n\n'
        b'event: delta\ndata: {"text":"I went"}\n\n'
    )

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(head + b"%x\r\n" % len(events) + events + b"\r\n")
        await writer.drain()
        writer.close()  # no last chunk: the body is cut short

    server = await asyncio.start_server(cut, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        code, out, err = await run_polish(f"http://127.0.0.1:{port}", stdin=TEXT.encode())

    assert (code, out) == (EXIT_UNREACHABLE, b"I went")  # what had arrived, nothing more
    assert err == b"pollex: the connection to pollex was lost mid-answer\n"


async def test_not_utf8_is_bad_input() -> None:
    code, out, err = await run_polish(closed_port_url(), stdin=b"caf\xe9\n")

    assert (code, out, err) == (EXIT_BAD_INPUT, b"", b"pollex: the input is not UTF-8 text\n")


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (401, b'{"error": "missing API key"}', (EXIT_AUTH, "missing API key")),
        (403, b"Forbidden", (EXIT_AUTH, "Forbidden")),
        (413, b'{"error": "request body too large"}', (EXIT_BAD_INPUT, "request body too large")),
        (503, b'{"error": {"message": "down", "type": "server_error"}}', (EXIT_UPSTREAM, "down")),
        (500, b"", (EXIT_UPSTREAM, "HTTP 500")),
        (
            429,
            b'{"error": "rate limit exceeded"}',
            (EXIT_FAILURE, "rate limit exceeded (HTTP 429)"),
        ),
        (404, b'{"error": "not found"}', (EXIT_FAILURE, "not found (HTTP 404)")),
    ],
)
def test_http_status_classes(status: int, body: bytes, expected: tuple[int, str]) -> None:
    failure = _status_failure(status, body)

    assert (failure.exit_code, str(failure)) == expected


# --- output shaping -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "chunks", "expected"),
    [
        ("a\n", ["\n", " Fixed", " text", ".\n\n"], "Fixed text.\n"),
        ("a", ["Fixed ", "text.  "], "Fixed text."),
        ("\r\n a \r\n\r\n", ["Fixed"], "\r\nFixed\r\n\r\n"),
        ("a\n", ["One\n", "\n", "two."], "One\n\ntwo.\n"),
    ],
)
def test_text_output_takes_the_inputs_edges(source: str, chunks: list[str], expected: str) -> None:
    out = io.BytesIO()
    output = TextOutput(source, out)

    for chunk in chunks:
        output.write(chunk)
    output.finish()

    assert out.getvalue() == expected.encode()


def test_text_output_writes_each_chunk_as_it_comes() -> None:
    out = io.BytesIO()
    output = TextOutput("x\n", out)

    output.write("First ")
    assert out.getvalue() == b"First"  # the space waits: it may be the answer's end
    output.write("words")
    assert out.getvalue() == b"First words"


# --- progress: on stderr, for a terminal only -------------------------------------------------


async def test_progress_goes_to_a_terminal_stderr_only(pollex: Any) -> None:
    client = await pollex(mock=True)
    with Terminal() as terminal:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "pollex", "polish", "--url", url_of(client)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=terminal.fd,
        )
        out, _ = await asyncio.wait_for(process.communicate(TEXT.encode()), 20)
        shown = terminal.shown()

    assert (process.returncode, out) == (0, tidy(TEXT).encode())
    assert "pollex: waiting for a model…".encode() in shown
    assert shown.endswith(b"\r\x1b[K")  # the line is cleared at the end


def test_progress_clears_before_text_on_the_same_terminal() -> None:
    err = io.StringIO()
    progress = Progress(err, enabled=True, stdout_tty=True)

    progress.waiting()
    progress.started("mock", None)
    progress.text(5)
    progress.text(5)
    progress.clear()

    assert err.getvalue() == (
        "\r\x1b[Kpollex: waiting for a model…\r\x1b[Kpollex: mock is writing…\r\x1b[K"
    )


def test_progress_counts_when_the_text_goes_elsewhere() -> None:
    err = io.StringIO()
    progress = Progress(err, enabled=True, stdout_tty=False)

    progress.started("qwen", "gpu")
    progress.text(7)

    assert err.getvalue().endswith("\r\x1b[Kpollex: qwen (for gpu): 7 characters")


# --- a second, independent SSE consumer sees the same events -------------------------------


async def test_httpx_sse_and_pollex_decoder_see_the_same_stream(pollex: Any) -> None:
    client = await pollex(mock=True)
    url = str(client.make_url("/api/polish"))
    body = {"text": TEXT, "stream": True}

    by_httpx = await collect_events(url, body)
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
        decoder = SSEDecoder()
        by_pollex = decoder.feed(await resp.read()) + decoder.close()

    names = [e.event for e in by_httpx]
    assert names == ["start"] + ["delta"] * len(tidy(TEXT).split()) + ["done"]
    assert [e.event for e in by_pollex] == names
    deltas = [json.loads(e.data)["text"] for e in by_pollex if e.event == "delta"]
    assert deltas == [e.data["text"] for e in by_httpx if e.event == "delta"]
    assert "".join(deltas) == by_httpx[-1].data["polished"] == tidy(TEXT)
