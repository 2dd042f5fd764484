"""Fake upstreams: real aiohttp servers on 127.0.0.1 speaking each upstream's wire format.

The llama-server fake replays the captured traffic in tests/fixtures/llama-server/ byte
for byte (same HTTP chunks as on the wire) and can speak b5050's dialect too. Each fake
has knobs a test turns: what health says, what a chat request gets, pacing, a gate to
hold the stream, a cut mid-stream; and it records what it was asked and whether its
client went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from aiohttp import web
from captures import load, wire_chunks
from helpers import free_port

WORDS = ("I", " went", " to", " the", " store", " yesterday", ".")


def closed_port_url() -> str:
    """A loopback URL where nothing listens (connection refused)."""
    return f"http://127.0.0.1:{free_port()}"


class FakeUpstream:
    """What every fake shares: request log, pacing, gate, cut, cancellation watch."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.chunk_delay = 0.0
        self.gate: asyncio.Event | None = None
        self.gate_after = 1
        self.cut_after: int | None = None
        self.hang = False
        self.cancelled = asyncio.Event()
        self.streams_started = 0
        self.streams_completed = 0
        self.probes = 0
        # Like llama-server's `-np`: past `slots` answers at once, requests wait inside.
        self.slots: int | None = None
        self.in_flight = 0
        self.most_in_flight = 0
        self._slot_semaphore: asyncio.Semaphore | None = None
        # The answer to a text (the last message), word by word; None: the fake's own.
        self.reply: Callable[[str], Sequence[str]] | None = None
        # Exact stream bytes (one HTTP chunk each) instead of the fake's own answer.
        self.raw_chunks: Sequence[bytes] | None = None
        self._thaw: asyncio.Event | None = None

    def freeze(self) -> None:
        """Like SIGSTOP: from now on nothing is answered and no stream moves."""
        if self._thaw is None:
            self._thaw = asyncio.Event()

    def thaw(self) -> None:
        if self._thaw is not None:
            self._thaw.set()
            self._thaw = None

    async def _unless_frozen(self) -> None:
        thaw = self._thaw
        if thaw is not None:
            await thaw.wait()

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        if self.slots is not None and self._slot_semaphore is None:
            self._slot_semaphore = asyncio.Semaphore(self.slots)
        async with self._slot_semaphore or contextlib.nullcontext():
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                yield
            finally:
                self.in_flight -= 1

    def _reply_words(self, body: dict[str, Any], limit: int | None) -> tuple[list[str], str]:
        """The reply's words for this request, cut at `limit`, and the finish reason."""
        assert self.reply is not None
        text = body["messages"][-1]["content"]
        words = list(self.reply(text))
        if limit is not None and len(words) > limit:
            return words[:limit], "length"
        return words, "stop"

    async def _record(self, request: web.Request) -> Any:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        return body

    async def _hang_forever(self) -> web.Response:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        raise AssertionError("unreachable")

    async def _stream(
        self, request: web.Request, chunks: Sequence[bytes], headers: dict[str, str]
    ) -> web.StreamResponse:
        """Send `chunks` one HTTP chunk each, honouring the knobs."""
        if self.raw_chunks is not None:
            chunks = self.raw_chunks
        async with self._slot():
            return await self._send(request, chunks, headers)

    async def _send(
        self, request: web.Request, chunks: Sequence[bytes], headers: dict[str, str]
    ) -> web.StreamResponse:
        self.streams_started += 1
        response = web.StreamResponse(status=200, headers=headers)
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            for index, chunk in enumerate(chunks):
                await self._unless_frozen()
                if self.cut_after is not None and index == self.cut_after:
                    assert request.transport is not None
                    request.transport.close()
                    return response
                if self.gate is not None and index == self.gate_after:
                    await self.gate.wait()
                if self.chunk_delay and index:
                    await asyncio.sleep(self.chunk_delay)
                await response.write(chunk)
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionError):
            self.cancelled.set()
            raise
        self.streams_completed += 1
        return response

    def app(self) -> web.Application:
        raise NotImplementedError


class FakeLlamaServer(FakeUpstream):
    """llama-server. `health`: ready | loading | hang. `chat`: ok | loading | error500 |
    context | bad_request | hang | garbage | echo500 (a 500 whose message quotes the
    text). `dialect`: current (the captures) | b5050."""

    def __init__(self) -> None:
        super().__init__()
        self.health = "ready"
        self.chat = "ok"
        self.dialect = "current"
        self.stream_chunks: Sequence[bytes] = wire_chunks("chat-stream.wire.http")
        self.mid_stream_error = False
        # What GET /props says (`total_slots`, `default_generation_settings.n_ctx`); None: 404.
        self.props: dict[str, Any] | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/props", self._props)
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    async def _props(self, request: web.Request) -> web.Response:
        await self._unless_frozen()
        if self.props is None:
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response(self.props)

    async def _health(self, request: web.Request) -> web.StreamResponse:
        self.probes += 1
        await self._unless_frozen()
        if self.health == "hang":
            return await self._hang_forever()
        capture = load("health-ready.http" if self.health == "ready" else "health-loading.http")
        return _replay(capture.status, capture.replay_headers(), capture.body)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        if self.chat == "hang":
            return await self._hang_forever()
        errors = {
            "loading": "chat-while-loading.http",
            "error500": "error-not-json.http",
            "context": "error-context-exceeded.http",
            "bad_request": "error-no-messages.http",
        }
        if self.chat in errors:
            capture = load(errors[self.chat])
            return _replay(capture.status, capture.replay_headers(), capture.body)
        if self.chat == "echo500":
            text = body["messages"][-1]["content"]
            error = {"code": 500, "message": f"cannot polish: {text}", "type": "server_error"}
            return web.json_response({"error": error}, status=500)
        if self.chat == "garbage":
            return web.Response(
                status=200, text="<html>proxy error</html>", content_type="text/html"
            )
        if not body.get("stream"):
            capture = load("chat-stop.http")
            return _replay(capture.status, capture.replay_headers(), capture.body)
        chunks = list(self.stream_chunks)
        if self.reply is not None:
            words, reason = self._reply_words(body, body.get("max_tokens"))
            chunks = llama_chunks(words, reason)
        if self.mid_stream_error:
            chunks = chunks[:3] + self._error_chunks()
        return await self._stream(request, chunks, load("chat-stream.http").replay_headers())

    def _error_chunks(self) -> list[bytes]:
        error = {
            "code": 500,
            "message": "llama_decode failed: out of memory",
            "type": "server_error",
        }
        if self.dialect == "b5050":
            return [b"error: " + json.dumps(error).encode() + b"\n\n", b"data: [DONE]\n\n"]
        return [b"data: " + json.dumps({"error": error}).encode() + b"\n\n"]


def llama_chunks(words: Sequence[str], reason: str = "stop") -> list[bytes]:
    """An answer in llama-server's stream format (as in chat-stream.wire.http): the role,
    one chunk per word, the finish chunk with usage and timings, then [DONE]."""
    base = {"object": "chat.completion.chunk", "created": 1, "id": "chatcmpl-fake", "model": "m"}

    def chunk(delta: dict[str, Any], finish: str | None, **extra: Any) -> bytes:
        choice = {"finish_reason": finish, "index": 0, "delta": delta}
        return b"data: " + json.dumps({"choices": [choice], **base, **extra}).encode() + b"\n\n"

    usage = {"completion_tokens": len(words), "prompt_tokens": 40, "total_tokens": 40}
    timings = {"prompt_n": 40, "predicted_n": len(words), "predicted_per_second": 5.0}
    return [
        chunk({"role": "assistant", "content": None}, None),
        *(chunk({"content": word}, None) for word in words),
        chunk({}, reason, usage=usage, timings=timings),
        b"data: [DONE]\n\n",
    ]


class FakeOllama(FakeUpstream):
    """Ollama. `state`: ok | missing_model | error500 | hang. `mid_stream_error` sends
    Ollama's in-band `{"error": ...}` line after two words."""

    def __init__(self, model: str = "qwen2.5:1.5b", words: Sequence[str] = WORDS) -> None:
        super().__init__()
        self.model = model
        self.words = list(words)
        self.state = "ok"
        self.mid_stream_error = False
        self.crlf = False

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._root)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_post("/api/chat", self._chat)
        return app

    async def _root(self, request: web.Request) -> web.Response:
        self.probes += 1
        await self._unless_frozen()
        if self.state == "hang":
            return await self._hang_forever()
        return web.Response(text="Ollama is running")

    async def _tags(self, request: web.Request) -> web.Response:
        names = [] if self.state == "missing_model" else [self.model]
        return web.json_response({"models": [{"name": n, "model": n} for n in names]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        if self.state == "hang":
            return await self._hang_forever()
        if self.state == "missing_model":
            return web.json_response({"error": f"model '{self.model}' not found"}, status=404)
        if self.state == "error500":
            return web.json_response({"error": "llama runner process has terminated"}, status=500)
        words, reason = self.words, "stop"
        if self.reply is not None:
            words, reason = self._reply_words(body, body.get("options", {}).get("num_predict"))
        lines = [self._line(word, done=False) for word in words]
        if self.mid_stream_error:
            lines = [
                *lines[:2],
                json.dumps({"error": "an error was encountered while running the model"}),
            ]
        else:
            lines.append(self._line("", done=True, reason=reason))
        if not body.get("stream", True):
            final = json.loads(self._line("".join(self.words), done=True))
            return web.json_response(final)
        end = "\r\n" if self.crlf else "\n"
        chunks = [(line + end).encode() for line in lines]
        return await self._stream(request, chunks, {"Content-Type": "application/x-ndjson"})

    def _line(self, content: str, *, done: bool, reason: str = "stop") -> str:
        obj: dict[str, Any] = {
            "model": self.model,
            "created_at": "2026-11-26T12:00:00.000000Z",
            "message": {"role": "assistant", "content": content},
            "done": done,
        }
        if done:
            obj.update(
                done_reason=reason,
                total_duration=4883583458,
                load_duration=1334875,
                prompt_eval_count=26,
                prompt_eval_duration=342546000,
                eval_count=len(self.words),
                eval_duration=1750000000,
            )
        return json.dumps(obj)


class FakeAnthropic(FakeUpstream):
    """Anthropic Messages API. `state`: ok | overloaded (529) | unauthorized (401);
    `mid_stream_error` sends `event: error` overloaded_error after two words."""

    def __init__(self, words: Sequence[str] = WORDS) -> None:
        super().__init__()
        self.words = list(words)
        self.state = "ok"
        self.mid_stream_error = False

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        return app

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        if self.state == "overloaded":
            return web.json_response(_anthropic_error("overloaded_error", "Overloaded"), status=529)
        if self.state == "unauthorized":
            return web.json_response(
                _anthropic_error("authentication_error", "invalid x-api-key"), status=401
            )
        if not body.get("stream"):
            return web.json_response(self._message(text="".join(self.words)))
        events: list[tuple[str, dict[str, Any]]] = [
            ("message_start", {"type": "message_start", "message": self._message(text=None)}),
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            ("ping", {"type": "ping"}),
        ]
        for word in self.words:
            events.append(
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": word},
                    },
                )
            )
        if self.mid_stream_error:
            events = [*events[:5], ("error", _anthropic_error("overloaded_error", "Overloaded"))]
        else:
            events += [
                ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                (
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                        "usage": {"output_tokens": len(self.words)},
                    },
                ),
                ("message_stop", {"type": "message_stop"}),
            ]
        chunks = [f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events]
        return await self._stream(request, chunks, {"Content-Type": "text/event-stream"})

    def _message(self, text: str | None) -> dict[str, Any]:
        return {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": "claude-test",
            "content": [] if text is None else [{"type": "text", "text": text}],
            "stop_reason": None if text is None else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 0 if text is None else len(self.words)},
        }


def _anthropic_error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_1"}


def _replay(status: int, headers: dict[str, str], body: bytes) -> web.Response:
    headers = dict(headers)
    content_type = headers.pop("Content-Type", "application/json")
    return web.Response(status=status, body=body, headers={**headers, "Content-Type": content_type})
