"""llama.cpp's `llama-server`, through its OpenAI-style `/v1/chat/completions`.

Speaks both dialects the Nano may meet (docs/upstreams.md): b5050 reports a mid-stream
failure as a non-standard `error: {...}` line followed by `data: [DONE]`; current builds
send `data: {"error": {...}}` and no `[DONE]`. A stream is complete only when a chunk with
a `finish_reason` arrived and then `[DONE]`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp

from pollex.adapters import ChatRequest, Finish, ProbeResult, Usage
from pollex.adapters.http import (
    HttpAdapter,
    read_error_body,
    reported_error,
    status_error,
    upstream_message,
)
from pollex.errors import UpstreamError
from pollex.parsing import SSEDecoder, SSEEvent

UPSTREAM = "llama-server"


class LlamaCppAdapter(HttpAdapter):
    provider = "llamacpp"
    label = "llama.cpp"
    upstream = UPSTREAM
    end_marker = "[DONE]"

    async def probe(self) -> ProbeResult:
        """`/health`, then `/props` for the server's slots and context per slot (both are
        answered by llama-server's HTTP threads, even while the GPU is busy)."""
        try:
            async with self._session.get(f"{self._base}/health") as resp:
                status = resp.status
            if status != 200:
                reason = "loading model" if status == 503 else f"/health answered HTTP {status}"
                return ProbeResult(False, f"{UPSTREAM} {reason}")
            async with self._session.get(f"{self._base}/props") as resp:
                props = await resp.json(content_type=None) if resp.status == 200 else None
        except aiohttp.ClientError:
            return ProbeResult(False, f"{UPSTREAM} unreachable")
        except ValueError:
            props = None
        return ProbeResult(True, slots=_positive(props, "total_slots"), context=_context(props))

    def stream(self, chat: ChatRequest, finish: Finish) -> AsyncGenerator[str, None]:
        body: dict[str, Any] = {
            "model": self.id,
            "messages": [{"role": m.role, "content": m.content} for m in chat.messages],
            "temperature": 0,
            "max_tokens": chat.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        decoder = SSEDecoder(self._max_line, error_field=True)
        return self._read_stream("/v1/chat/completions", body, decoder, _read_event, finish)

    async def _status_error(self, resp: aiohttp.ClientResponse) -> UpstreamError:
        body, raw = await read_error_body(resp)
        message = upstream_message(body, raw, _message)
        error = body.get("error") if isinstance(body, dict) else None
        error_type = error.get("type") if isinstance(error, dict) else None
        status = resp.status
        if status >= 500:
            return status_error(UPSTREAM, status, message, failover=True, marks_down=True)
        if error_type == "exceed_context_size_error":
            # The Nano's small context: a backend with a larger one can still serve the text.
            return status_error(
                UPSTREAM, status, message, failover=True, marks_down=False, what="context exceeded"
            )
        if status in (401, 403, 404):
            # pollex's configuration does not match this server: try the next backend.
            return status_error(UPSTREAM, status, message, failover=True, marks_down=True)
        return status_error(UPSTREAM, status, message, failover=False, marks_down=False)


def _read_event(event: SSEEvent, finish: Finish) -> str | None:
    if event.data == "[DONE]":
        if finish.reason is None:
            raise UpstreamError(f"{UPSTREAM} sent [DONE] without a finish_reason", kind="protocol")
        finish.ended = True
        return None
    try:
        data = json.loads(event.data)
    except ValueError:
        raise UpstreamError(f"{UPSTREAM} sent a chunk that is not JSON", kind="protocol") from None
    if event.event == "error":
        # b5050: `error: {"code", "message", "type"}`, the error object itself.
        raise reported_error(UPSTREAM, event.data)
    if not isinstance(data, dict):
        raise UpstreamError(f"{UPSTREAM} sent JSON that is not an object", kind="protocol")
    if "error" in data:
        raise reported_error(UPSTREAM, data["error"])
    if "usage" in data or "timings" in data:  # the last chunk or two, not every token
        finish.usage = _usage(data)
    choices = data.get("choices")
    if not choices:
        return None
    choice = choices[0]
    reason = choice.get("finish_reason")
    if reason:
        finish.reason = reason
    content = (choice.get("delta") or {}).get("content")
    return content if isinstance(content, str) else None


def _message(body: Any) -> str | None:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    return error if isinstance(error, str) and error else None


def _positive(data: Any, key: str) -> int | None:
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _context(props: Any) -> int | None:
    """Tokens of context per slot: b5050's `default_generation_settings` is slot 0's."""
    settings = props.get("default_generation_settings") if isinstance(props, dict) else None
    return _positive(settings, "n_ctx")


def _usage(data: dict[str, Any]) -> Usage | None:
    usage = data.get("usage")
    timings = data.get("timings")
    if not isinstance(usage, dict) and not isinstance(timings, dict):
        return None
    usage = usage if isinstance(usage, dict) else {}
    timings = timings if isinstance(timings, dict) else {}
    prompt = usage.get("prompt_tokens") or timings.get("prompt_n", 0) + timings.get("cache_n", 0)
    completion = usage.get("completion_tokens") or timings.get("predicted_n", 0)
    speed = timings.get("predicted_per_second")
    return Usage(int(prompt), int(completion), round(float(speed), 2) if speed else None)
