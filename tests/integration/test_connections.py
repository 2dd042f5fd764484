"""Slow, half-open and malformed clients against `pollex.server.serve`, over raw sockets.

The server runs as `pollex serve` runs it (the same runner and connections), on a free
loopback port, with deadlines in tenths of a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import os
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from helpers import RawClient, Reply, free_port, read_until_closed, start_serving
from structlog.testing import capture_logs

KEY = "k-7f3a9-very-secret"
HEALTH = b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n\r\n"


async def read_response(reader: asyncio.StreamReader) -> Reply:
    """One whole response with a Content-Length, leaving the connection open."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    reply = Reply(head, "open", 0.0)
    body = await reader.readexactly(int(reply.headers["content-length"]))
    return Reply(head + body, "open", 0.0)


@contextlib.asynccontextmanager
async def serving(**settings: Any) -> AsyncIterator[RawClient]:
    running = await start_serving(mock=True, **settings)
    try:
        yield RawClient("127.0.0.1", running.port)
    finally:
        running.stop.set()
        await asyncio.wait_for(running.task, 5)


# --- deadlines (issue 9, item 3) --------------------------------------------------------


async def test_headers_that_stop_coming_get_a_json_408_then_close() -> None:
    async with serving(header_timeout_s=0.3) as pollex:
        reply = await pollex.send(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\nX-A: 1\r\n")

    assert reply.ended == "eof"
    assert 0.2 < reply.after_s < 2.0
    assert reply.status == 408
    assert reply.json() == {"error": "request headers not received in time"}
    assert reply.headers["connection"] == "close"
    assert len(reply.headers["x-request-id"]) == 32


async def test_slowloris_is_cut_at_the_header_deadline() -> None:
    """A header byte every 50 ms keeps aiohttp reading forever; the deadline does not move."""
    async with serving(header_timeout_s=0.3) as pollex:
        reader, writer = await pollex.connect()
        started = time.monotonic()
        request = b"GET /api/health HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 100
        with contextlib.suppress(ConnectionError):
            for byte in request:
                writer.write(bytes([byte]))
                await writer.drain()
                if reader.at_eof() or time.monotonic() - started > 3:
                    break
                await asyncio.sleep(0.05)
        reply = await read_until_closed(reader, 1.0)
        cut_after_s = time.monotonic() - started
        writer.close()

    assert reply.ended in ("eof", "reset")
    assert cut_after_s < 2.5  # a 0.3 s deadline, not the 7 s the bytes would take


async def test_a_connection_that_sends_nothing_is_closed_without_an_answer() -> None:
    async with serving(header_timeout_s=0.3) as pollex:
        reader, writer = await pollex.connect()
        reply = await read_until_closed(reader, 3.0)
        writer.close()

    assert (reply.ended, reply.data) == ("eof", b"")
    assert 0.2 < reply.after_s < 2.0


async def test_requests_in_time_and_idle_keepalive_are_not_cut() -> None:
    """The header deadline covers sending a request, not waiting between requests."""
    async with serving(header_timeout_s=0.3, keepalive_timeout_s=5) as pollex:
        reader, writer = await pollex.connect()
        writer.write(HEALTH[:20])
        await asyncio.sleep(0.15)
        writer.write(HEALTH[20:])
        first = await read_response(reader)
        await asyncio.sleep(0.5)  # idle longer than the header deadline
        writer.write(HEALTH)
        second = await read_response(reader)
        writer.close()

    assert (first.status, second.status) == (200, 200)


async def test_a_stream_longer_than_the_header_deadline_is_not_cut() -> None:
    body = json.dumps({"text": " ".join(["word"] * 20), "stream": True}).encode()
    request = (
        b"POST /api/polish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    async with serving(header_timeout_s=0.2) as pollex:  # the mock: 30 ms a word
        reply = await pollex.send(request, give_up_s=5)

    assert reply.ended == "eof"
    assert reply.after_s > 0.4
    assert b"event: done" in reply.body


async def test_idle_keepalive_connection_is_closed_after_keepalive_timeout() -> None:
    async with serving(keepalive_timeout_s=0.3) as pollex:
        reader, writer = await pollex.connect()
        writer.write(HEALTH)
        assert (await read_response(reader)).status == 200
        reply = await read_until_closed(reader, 3.0)
        writer.close()

    assert reply.ended == "eof"
    assert 0.2 < reply.after_s < 2.0


async def test_body_that_stops_coming_gets_a_json_408() -> None:
    request = (
        b"POST /api/polish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"text": "i go'
    )
    async with serving(body_timeout_s=0.3) as pollex:
        reader, writer = await pollex.connect()
        writer.write(request)
        started = time.monotonic()
        reply = await read_response(reader)
        answered_after_s = time.monotonic() - started
        writer.close()

    assert 0.2 < answered_after_s < 2.0
    assert reply.status == 408
    assert reply.json() == {"error": "request body not received in time"}
    assert reply.headers["connection"] == "close"


async def test_a_declared_body_over_the_limit_is_413_without_waiting_for_it() -> None:
    request = (
        b"POST /api/polish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000000\r\n\r\n"
    )
    async with serving(body_timeout_s=5) as pollex:
        reader, writer = await pollex.connect()
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 1)
        writer.close()

    assert head.startswith(b"HTTP/1.1 413")


# --- malformed requests (items 5 and 9) -------------------------------------------------


@pytest.mark.parametrize(
    ("header_line", "error"),
    [
        (
            b"X-API-Key: " + KEY.encode() + b"\x00tail",
            "malformed request: invalid header value char",
        ),
        (b"X-API-Key : " + KEY.encode(), "malformed request: invalid header token"),
        (b"X-API-Key: " + KEY.encode() + b"x" * 9000, "malformed request: a line is too long"),
    ],
    ids=["nul-byte", "space-before-colon", "too-long"],
)
async def test_malformed_header_is_a_json_400_that_quotes_nothing(
    header_line: bytes,
    error: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with serving(api_key=KEY) as pollex:
        with capture_logs() as logs:
            reply = await pollex.send(
                b"GET /api/models HTTP/1.1\r\nHost: localhost\r\n" + header_line + b"\r\n\r\n"
            )

    assert reply.status == 400
    assert reply.headers["content-type"].startswith("application/json")
    assert len(reply.headers["x-request-id"]) == 32
    assert reply.json() == {"error": error}
    assert KEY.encode() not in reply.data
    # One structured line, without the header's value; nothing on stdout/stderr about it.
    lines = [entry for entry in logs if entry.get("status") == 400]
    assert len(lines) == 1
    assert lines[0]["request_id"] == reply.headers["x-request-id"]
    assert KEY not in json.dumps(logs, default=str)
    captured = capsys.readouterr()
    assert KEY not in captured.out + captured.err
    assert "Traceback" not in captured.err
    assert KEY not in caplog.text
    assert "Error handling request" not in caplog.text


@pytest.mark.parametrize(
    ("request_line", "error"),
    [
        (b"G\x01ET / HTTP/1.1", "malformed request: invalid method"),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            "malformed request: HTTPS sent to an HTTP port",
        ),
    ],
    ids=["bad-method", "tls-client-hello"],
)
async def test_a_bad_request_line_is_a_json_400(request_line: bytes, error: str) -> None:
    async with serving() as pollex:
        reply = await pollex.send(request_line + b"\r\nHost: localhost\r\n\r\n")

    assert reply.status == 400
    assert reply.json() == {"error": error}
    assert len(reply.headers["x-request-id"]) == 32


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("deflate", zlib.compress)],
)
async def test_a_body_that_does_not_decode_is_a_json_400(
    encoding: str, compress: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    good = compress(b'{"text": "i goes home"}')
    corrupt = good[:4] + bytes(b ^ 0x5A for b in good[4:])

    def request(body: bytes) -> bytes:
        return (
            b"POST /api/polish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Encoding: %s\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
            % (encoding.encode(), len(body), body)
        )

    async with serving() as pollex:
        polished = await pollex.send(request(good))
        refused = await pollex.send(request(corrupt))

    assert polished.status == 200  # a body that decodes is fine
    assert refused.status == 400
    assert refused.json() == {"error": "request body: cannot decode its Content-Encoding"}
    assert len(refused.headers["x-request-id"]) == 32
    assert "Traceback" not in capsys.readouterr().err


# --- out of file descriptors (item 3) ---------------------------------------------------

FD_LIMIT = 40  # pollex idles at about 10 descriptors


def test_accept_failures_are_logged_once_a_second_with_a_count(tmp_path: Path) -> None:
    """A real EMFILE: pollex under a low descriptor limit, more connections than it can
    accept. asyncio reports each failed accept() (a backlog's worth per loop turn, with a
    traceback); pollex logs one line per second with a count instead."""
    port = free_port()
    log = tmp_path / "pollex.log"
    code = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({FD_LIMIT}, {FD_LIMIT}))\n"
        "from pollex.cli import main\n"
        f"sys.exit(main(['serve', '--mock', '--port', '{port}']))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLLEX_")}
    env["POLLEX_LOG_FORMAT"] = "json"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    held: list[socket.socket] = []
    try:
        wait_for_port(port, process)
        for _ in range(FD_LIMIT + 20):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        time.sleep(0.5)  # within the first second: exactly one line
        output = log.read_text(errors="replace")
    finally:
        for sock in held:
            sock.close()
        process.kill()
        process.wait(timeout=10)

    assert "out of system resource" not in output
    failures = [json.loads(line) for line in output.splitlines() if "accept_failed" in line]
    assert len(failures) == 1, output[-2000:]
    assert failures[0]["count"] >= 1
    assert failures[0]["error"] == "Too many open files"


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, "pollex exited"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise AssertionError("pollex did not listen")
