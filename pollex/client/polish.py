"""`pollex polish`: send FILE or stdin to a running pollex and stream the polished text.

Made to be an editor filter (`:'<,'>!pollex polish`): no prompt, all of stdin is read,
stdout carries the polished text and nothing else (errors and the progress line go to
stderr), and the output is shaped like the input: the answer's own leading and trailing
whitespace is dropped and the input's leading and trailing newlines are kept, so a
filtered block of lines stays a block of lines. Each failure class has its own exit
status, so a script or an editor mapping can tell them apart.

aiohttp is imported when a request is made, so `pollex --help` stays quick.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pollex.client.answers import (
    EXIT_AUTH,
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_UPSTREAM,
    EXIT_USAGE,
    Failure,
    error_message,
    from_pollex,
    not_pollex,
)
from pollex.client.display import Progress, TextOutput
from pollex.parsing import SSEDecoder, SSEEvent

DEFAULT_URL = "http://127.0.0.1:8090"
CONNECT_TIMEOUT_S = 10.0
# pollex sends `: keep-alive` after `keepalive_s` (default 15 s) of silence, so this much
# silence means the connection is dead, not that the model is slow.
READ_TIMEOUT_S = 120.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("POLLEX_URL") or DEFAULT_URL,
        help=f"pollex base URL (env POLLEX_URL, default {DEFAULT_URL})",
    )
    parser.add_argument("--model", help="model id to ask first (default: the failover chain)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("POLLEX_API_KEY") or None,
        help="sent as X-API-Key (env POLLEX_API_KEY)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the final `done` event as JSON instead"
    )
    parser.add_argument("file", nargs="?", metavar="FILE", help="text to polish (default stdin)")


def run(args: argparse.Namespace) -> int:
    """The `polish` subcommand; returns the exit status."""
    try:
        check_url(args.url)
        text = read_input(args.file)
        if not text.strip():
            raise Failure("nothing to polish: the input is empty", EXIT_BAD_INPUT)
        progress = Progress(
            sys.stderr, enabled=sys.stderr.isatty(), stdout_tty=_stdout_tty() and not args.json
        )
        output = None if args.json else TextOutput(text, sys.stdout.buffer)
        try:
            done = asyncio.run(
                polish(
                    args.url,
                    text,
                    model=args.model,
                    api_key=args.api_key,
                    on_text=output.write if output else None,
                    progress=progress,
                )
            )
        finally:
            progress.clear()
        if output is not None:
            output.finish()
        else:
            sys.stdout.write(json.dumps(done, ensure_ascii=False) + "\n")
            sys.stdout.flush()
    except Failure as exc:
        print(f"pollex: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # The reader went away (`| head`); keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    return EXIT_OK


def check_url(url: str) -> None:
    """An http(s) URL with a host, else a usage error (exit 2) before anything is read."""
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        valid = False
    if not valid:
        raise Failure(f"invalid URL: {url} (expected http://HOST[:PORT])", EXIT_USAGE)


def read_input(file: str | None) -> str:
    try:
        raw = sys.stdin.buffer.read() if file in (None, "-") else Path(file).read_bytes()
    except OSError as exc:
        raise Failure(f"cannot read {file}: {exc.strerror}", EXIT_BAD_INPUT) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Failure("the input is not UTF-8 text", EXIT_BAD_INPUT) from None


def _stdout_tty() -> bool:
    try:
        return sys.stdout.isatty()
    except ValueError:
        return False


async def polish(
    url: str,
    text: str,
    *,
    model: str | None = None,
    api_key: str | None = None,
    on_text: Callable[[str], None] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """POST to `{url}/api/polish` as SSE; hand each delta to `on_text`; return `done`."""
    import aiohttp

    body: dict[str, Any] = {"text": text, "stream": True}
    if model:
        body["model_id"] = model
    headers = {"Accept": "text/event-stream"}
    if api_key:
        headers["X-API-Key"] = api_key
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S
    )
    endpoint = f"{url.rstrip('/')}/api/polish"
    if progress is not None:
        progress.waiting()
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(endpoint, json=body, headers=headers) as resp,
        ):
            if resp.status != 200:
                answer = await resp.read()
                if not from_pollex(resp.headers, answer):
                    raise not_pollex(url, resp.status)
                raise _status_failure(resp.status, answer)
            if not resp.headers.get("Content-Type", "").startswith("text/event-stream"):
                raise Failure(
                    f"not a pollex server at {url} (HTTP 200, not an event stream)",
                    EXIT_FAILURE,
                )
            decoder = SSEDecoder()
            try:
                async for chunk in resp.content.iter_any():
                    for event in decoder.feed(chunk):
                        done = _handle(event, on_text, progress)
                        if done is not None:
                            return done
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
                # aiohttp's words for it are about transfer encodings and lengths.
                raise Failure(
                    "the connection to pollex was lost mid-answer", EXIT_UNREACHABLE
                ) from None
    except aiohttp.InvalidURL:
        raise Failure(f"invalid URL: {url}", EXIT_USAGE) from None
    except aiohttp.ClientConnectorError as exc:
        error = exc.os_error
        # errno > 0 is an OS error (refused, unreachable); < 0 a resolver one (gaierror).
        errno = error.errno or 0
        reason = (os.strerror(errno) if errno > 0 else error.strerror) or str(error)
        raise Failure(f"cannot reach pollex at {url}: {reason}", EXIT_UNREACHABLE) from None
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        detail = str(exc) or type(exc).__name__
        raise Failure(f"lost the connection to pollex: {detail}", EXIT_UNREACHABLE) from None
    raise Failure("pollex closed the stream before the answer was complete", EXIT_UNREACHABLE)


def _handle(
    event: SSEEvent, on_text: Callable[[str], None] | None, progress: Progress | None
) -> dict[str, Any] | None:
    """One event of the stream; returns the `done` payload when it is the last one."""
    try:
        data = json.loads(event.data)
    except ValueError:
        raise Failure(f"pollex sent an invalid {event.event} event", EXIT_FAILURE) from None
    if not isinstance(data, dict):
        raise Failure(f"pollex sent an invalid {event.event} event", EXIT_FAILURE)
    if event.event == "delta":
        chunk = data.get("text")
        if isinstance(chunk, str):
            if progress is not None:
                progress.text(len(chunk))
            if on_text is not None:
                on_text(chunk)
    elif event.event == "start":
        if progress is not None:
            progress.started(str(data.get("model")), data.get("fallback_from"))
    elif event.event == "done":
        return data
    elif event.event == "error":
        raise Failure(str(data.get("error") or "the polish failed"), EXIT_UPSTREAM)
    return None


def _status_failure(status: int, body: bytes) -> Failure:
    message = error_message(body) or f"HTTP {status}"
    if status in (401, 403):
        return Failure(message, EXIT_AUTH)
    if status in (400, 413):
        return Failure(message, EXIT_BAD_INPUT)
    if status >= 500:
        return Failure(message, EXIT_UPSTREAM)
    return Failure(f"{message} (HTTP {status})", EXIT_FAILURE)
