"""Ollama, through its native `/api/chat` (NDJSON), for the richer final metrics."""

from __future__ import annotations

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
from pollex.parsing import NDJSONDecoder

UPSTREAM = "ollama"


class OllamaAdapter(HttpAdapter):
    provider = "ollama"
    label = "Ollama"
    upstream = UPSTREAM
    end_marker = "done"

    async def probe(self) -> ProbeResult:
        try:
            async with self._session.get(f"{self._base}/") as resp:
                if resp.status != 200:
                    return ProbeResult(False, f"{UPSTREAM} answered HTTP {resp.status}")
            async with self._session.get(f"{self._base}/api/tags") as resp:
                tags = await resp.json(content_type=None) if resp.status == 200 else None
        except aiohttp.ClientError:
            return ProbeResult(False, f"{UPSTREAM} unreachable")
        except ValueError:
            tags = None
        if tags is not None and not _has_model(tags, self.id):
            return ProbeResult(False, f"{UPSTREAM} model not found")
        return ProbeResult(True)

    def stream(self, chat: ChatRequest, finish: Finish) -> AsyncGenerator[str, None]:
        body = {
            "model": self.id,
            "messages": [{"role": m.role, "content": m.content} for m in chat.messages],
            "stream": True,
            "options": {"temperature": 0, "num_predict": chat.max_tokens},
        }
        decoder = NDJSONDecoder(self._max_line)
        return self._read_stream("/api/chat", body, decoder, _read_object, finish)

    async def _status_error(self, resp: aiohttp.ClientResponse) -> UpstreamError:
        body, raw = await read_error_body(resp)
        message = upstream_message(body, raw, _message)
        if resp.status >= 500 or resp.status == 404:
            # 404 is "model not found": this backend cannot serve, another one may.
            return status_error(UPSTREAM, resp.status, message, failover=True, marks_down=True)
        return status_error(UPSTREAM, resp.status, message, failover=False, marks_down=False)


def _read_object(obj: Any, finish: Finish) -> str | None:
    if not isinstance(obj, dict):
        raise UpstreamError(f"{UPSTREAM} sent JSON that is not an object", kind="protocol")
    error = obj.get("error")
    if error is not None:
        raise reported_error(UPSTREAM, error)
    if obj.get("done") is True:
        _fill_finish(finish, obj)
    message = obj.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, str) else None


def _fill_finish(finish: Finish, obj: dict[str, Any]) -> None:
    finish.reason = obj.get("done_reason") or "stop"
    finish.ended = True
    completion = obj.get("eval_count")
    if completion is None:
        return
    duration_ns = obj.get("eval_duration") or 0
    speed = round(completion / duration_ns * 1e9, 2) if duration_ns else None
    finish.usage = Usage(int(obj.get("prompt_eval_count") or 0), int(completion), speed)


def _has_model(tags: Any, model: str) -> bool:
    models = tags.get("models") if isinstance(tags, dict) else None
    if not isinstance(models, list):
        return True
    wanted = {model, f"{model}:latest"} if ":" not in model else {model}
    return any(isinstance(m, dict) and m.get("name") in wanted for m in models)


def _message(body: Any) -> str | None:
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, str) and error else None
