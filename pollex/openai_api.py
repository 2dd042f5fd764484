"""The OpenAI-compatible facade: `POST /v1/chat/completions` and `GET /v1/models`.

Editor plugins that already speak the OpenAI API (Continue, Zed, avante, gptel,
CodeCompanion, openai-python) use pollex through it, with the failover of /api/polish:
the request is planned and served by the same `Router`; this module only translates
between OpenAI's wire format (upstreams.md §4) and pollex's.

The `model` field picks the mode and the adapters:

- absent, `pollex` or `pollex:polish`: polish mode via the failover chain. The LAST user
  message is polished with pollex's own system prompt; other messages (a plugin's system
  prompt, earlier turns) are dropped, so any chat plugin becomes a polishing tool.
- `pollex:chat`: the messages are passed through as they are, via the chain.
- a backend id (`GET /v1/models` lists them): passed through, that backend first, the
  chain after it if it fails before its first token.
- anything else: 404 `model_not_found`.

Streaming is decided by the body's `stream` field only (no plugin surveyed sends an
`Accept` header that means it). Sampling fields (`temperature`, `top_p`, `stop`, ...),
`tools`, `n` and anything unknown are ignored: pollex always asks for one greedy answer.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from pollex.adapters import Adapter, ChatRequest, Message, Usage
from pollex.errors import PollexError
from pollex.http_errors import error_response
from pollex.keys import (
    BACKENDS,
    CONFIG,
    LOG_FIELDS,
    METRICS,
    REQUEST_ID,
    ROUTER,
    SYSTEM_PROMPT,
)
from pollex.router import Plan, Served, UnknownModel
from pollex.sse import EventStream, dumps, encode

# The /api/polish handler's timing, metrics and log fields, so both APIs record alike.
from pollex.views import (
    BadRequest,
    TimedSink,
    log_failure,
    read_json_body,
    record_success,
    serve_guarded,
    serve_whole,
    stream_error_message,
    stream_in_progress,
)

POLISH_MODELS = frozenset({"pollex", "pollex:polish"})
CHAT_MODEL = "pollex:chat"
ROLES = ("system", "user", "assistant", "tool")
DONE = encode(None, "[DONE]")

# When `GET /v1/models` says the models were created: when the app was built.
MODELS_CREATED = web.AppKey("openai_models_created", int)


def add_routes(app: web.Application) -> None:
    app[MODELS_CREATED] = int(time.time())
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)


# --- request ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CompletionParams:
    backend_id: str | None  # None: the failover chain decides
    polish: bool
    messages: tuple[Message, ...]
    stream: bool
    include_usage: bool
    max_tokens: int | None

    @classmethod
    def parse(cls, body: Any, max_text_chars: int) -> CompletionParams:
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        model = body.get("model")
        if model is None:
            model = "pollex"
        if not isinstance(model, str):
            raise BadRequest("model: must be a string")
        messages = _messages(body.get("messages"))
        polish = model in POLISH_MODELS
        _check_size(messages, polish, max_text_chars)
        stream = body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise BadRequest("stream: must be true or false")
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        return cls(
            backend_id=None if polish or model == CHAT_MODEL else model,
            polish=polish,
            messages=messages,
            stream=bool(stream),
            include_usage=include_usage,
            max_tokens=_max_tokens(body),
        )

    def chat(self, system_prompt: str, max_output_tokens: int) -> ChatRequest:
        limit = min(self.max_tokens or max_output_tokens, max_output_tokens)
        if self.polish:
            return ChatRequest.polish(_last_user_text(self.messages), system_prompt, limit)
        return ChatRequest(self.messages, limit)

    @property
    def input_chars(self) -> int:
        if self.polish:
            return len(_last_user_text(self.messages))
        return sum(len(m.content) for m in self.messages)


def _messages(value: Any) -> tuple[Message, ...]:
    if not isinstance(value, list):
        raise BadRequest("messages: required, must be an array of messages")
    if not value:
        raise BadRequest("messages: must not be empty")
    messages = []
    for index, item in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(item, dict):
            raise BadRequest(f"{where}: must be an object")
        role = item.get("role")
        if role not in ROLES:
            raise BadRequest(f"{where}.role: must be one of {', '.join(ROLES)}")
        messages.append(Message(role, _content(item.get("content"), f"{where}.content")))
    return tuple(messages)


def _content(value: Any, where: str) -> str:
    """A string, or OpenAI's array of parts of which pollex takes the text ones.

    Parts are joined with a newline: plugins send separate blocks (context, question)
    as separate parts, and gluing them together would merge their edge words.
    """
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise BadRequest(f"{where}: must be a string or an array of text parts")
    texts = []
    for index, part in enumerate(value):
        if not (
            isinstance(part, dict)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        ):
            raise BadRequest(f'{where}[{index}]: only {{"type": "text", "text": str}} parts')
        texts.append(part["text"])
    return "\n".join(texts)


def _check_size(messages: tuple[Message, ...], polish: bool, limit: int) -> None:
    """`max_text_chars` applies to what reaches the model: in polish mode a plugin's long
    system prompt is dropped, so only the text to polish counts."""
    if polish:
        if len(_last_user_text(messages)) > limit:
            raise BadRequest(f"messages: the text to polish is longer than {limit} characters")
    elif sum(len(m.content) for m in messages) > limit:
        raise BadRequest(f"messages: longer than {limit} characters in total")


def _last_user_text(messages: tuple[Message, ...]) -> str:
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role == "user":
            text = messages[index].content
            if not text.strip():
                raise BadRequest(f"messages[{index}].content: must not be empty")
            return text
    raise BadRequest("messages: polish mode needs a user message (the text to polish)")


def _max_tokens(body: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadRequest(f"{name}: must be a positive integer")
        return value
    return None


# --- response encoding ------------------------------------------------------------------


def usage_object(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def completion_id(request: web.Request) -> str:
    """`chatcmpl-` + the request id, so a client's id points at pollex's log line."""
    return f"chatcmpl-{request[REQUEST_ID]}"


class ChunkEncoder:
    """`chat.completion.chunk` events that share one id, `created` and `model`.

    The part before a content delta's text is encoded once: a token costs one
    `json.dumps` of its text, not of the whole object.
    """

    def __init__(self, chunk_id: str, created: int, model: str) -> None:
        self._base = {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }
        head = dumps(self._base)[:-1]  # the object left open, to append `choices`
        self._content_head = f'data: {head},"choices":[{{"index":0,"delta":{{"content":'.encode()

    def role(self) -> bytes:
        return self._event({"role": "assistant", "content": ""}, None)

    def content(self, text: str) -> bytes:
        return self._content_head + dumps(text).encode() + b'},"finish_reason":null}]}\n\n'

    def finish(self, reason: str) -> bytes:
        return self._event({}, reason)

    def usage(self, usage: Usage) -> bytes:
        return encode(None, {**self._base, "choices": [], "usage": usage_object(usage)})

    def _event(self, delta: dict[str, str], reason: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": reason}
        return encode(None, {**self._base, "choices": [choice]})


def _stream_error(exc: PollexError) -> bytes:
    message = stream_error_message(exc)
    return encode(None, {"error": {"message": message, "type": "server_error", "code": exc.status}})


def _error(request: web.Request, exc: PollexError) -> web.Response:
    """An error before the first byte: OpenAI's body, `Retry-After` when worth retrying."""
    headers = None
    if exc.status == 503:  # no backend could serve, or shutting down
        # The probes will have looked again by then; sooner, the answer would be the same.
        retry = max(1, math.ceil(request.app[CONFIG].probe_interval_s))
        headers = {"Retry-After": str(retry)}
    return error_response(request, exc.status, exc.message, headers=headers)


# --- handlers ---------------------------------------------------------------------------


async def list_models(request: web.Request) -> web.Response:
    created = request.app[MODELS_CREATED]
    ids = ["pollex", CHAT_MODEL, *(a.id for a in request.app[BACKENDS].listed())]
    data = [{"id": i, "object": "model", "created": created, "owned_by": "pollex"} for i in ids]
    return web.json_response({"object": "list", "data": data})


async def chat_completions(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    app = request.app
    config = app[CONFIG]
    params = CompletionParams.parse(await read_json_body(request), config.max_text_chars)
    try:
        plan = app[ROUTER].plan(params.backend_id, True)
    except UnknownModel as exc:
        return error_response(request, 404, exc.message, code="model_not_found")
    chat = params.chat(app[SYSTEM_PROMPT], config.max_output_tokens)
    request[LOG_FIELDS].update(input_chars=params.input_chars, mode=_mode(params))
    app[METRICS].input_chars.observe(params.input_chars)
    if params.stream:
        return await _stream(request, plan, chat, params.include_usage, started)
    return await _complete(request, plan, chat, started)


def _mode(params: CompletionParams) -> str:
    return "openai_polish" if params.polish else "openai_chat"


async def _complete(
    request: web.Request, plan: Plan, chat: ChatRequest, started: float
) -> web.Response:
    try:
        served, _ = await serve_whole(request, plan, chat, started)
    except PollexError as exc:
        return _error(request, exc)
    body: dict[str, Any] = {
        "id": completion_id(request),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": served.adapter.id,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": served.text},
                "finish_reason": served.finish.reason or "stop",
            }
        ],
    }
    if served.finish.usage is not None:
        body["usage"] = usage_object(served.finish.usage)
    return web.json_response(body)


class DeferredStream:
    """An `EventStream` whose headers wait for the first chunk or the first keep-alive.

    Failures found quickly (every backend known down, a pinned backend refusing) are
    then still ordinary HTTP errors with a status and `Retry-After`, which the SDKs turn
    into typed exceptions and retry; only a wait longer than `keepalive_s` commits the
    200 so that `: keep-alive` comments can hold proxies open.
    """

    def __init__(self, request: web.Request, keepalive_s: float) -> None:
        self._request = request
        self.events = EventStream(request, keepalive_s)
        self._opening: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(keepalive_s, self._open)

    @property
    def opened(self) -> bool:
        return self._opening is not None

    @property
    def response(self) -> web.StreamResponse:
        return self.events.response

    def _open(self) -> None:
        if self._opening is None:
            self._timer.cancel()
            self._opening = asyncio.create_task(self.events.open())

    async def write(self, raw: bytes) -> None:
        self._open()
        assert self._opening is not None
        # Shielded: a watchdog cancelling the handler must not leave half-sent headers.
        await asyncio.shield(self._opening)
        await self.events.write(raw)

    async def write_last(self, raw: bytes, timeout_s: float) -> None:
        """The final bytes and the end of the body, bounded like `EventStream.finish`."""
        self._open()
        assert self._opening is not None
        await asyncio.shield(self._opening)
        await self.events.finish(raw, timeout_s)

    def close(self) -> None:
        self._timer.cancel()
        if self._opening is not None:
            self.events.stop_keepalive()


class _ChunkSink(TimedSink):
    def __init__(self, started: float, stream: DeferredStream, request: web.Request) -> None:
        super().__init__(started)
        self._stream = stream
        self._id = completion_id(request)
        self._created = int(time.time())
        self.encoder: ChunkEncoder | None = None

    async def start(self, adapter: Adapter, fallback_from: str | None) -> None:
        self.mark_first()
        self.encoder = ChunkEncoder(self._id, self._created, adapter.id)
        await self._stream.write(self.encoder.role())

    async def text(self, chunk: str) -> None:
        assert self.encoder is not None
        await self._stream.write(self.encoder.content(chunk))


async def _stream(
    request: web.Request, plan: Plan, chat: ChatRequest, include_usage: bool, started: float
) -> web.StreamResponse:
    app = request.app
    config = app[CONFIG]
    stream = DeferredStream(request, config.keepalive_s)
    sink = _ChunkSink(started, stream, request)
    with stream_in_progress(request):
        try:
            try:
                served = await serve_guarded(request, plan, chat, sink, config.stream_timeout_s)
            except PollexError as exc:
                log_failure(request, exc)
                if not stream.opened:
                    return _error(request, exc)
                await stream.write_last(_stream_error(exc), config.idle_timeout_s)
            else:
                record_success(request, served, sink, started)
                last = _tail(sink, served, include_usage)
                await stream.write_last(last, config.idle_timeout_s)
        finally:
            stream.close()
    return stream.response


def _tail(sink: _ChunkSink, served: Served, include_usage: bool) -> bytes:
    """The finish chunk, the usage chunk if asked for and known, then `[DONE]`."""
    assert sink.encoder is not None
    tail = sink.encoder.finish(served.finish.reason or "stop")
    if include_usage and served.finish.usage is not None:
        tail += sink.encoder.usage(served.finish.usage)
    return tail + DONE
