"""Ollama, through its native `/api/chat` (NDJSON), for the richer final metrics."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import aiohttp

from pollex.adapters import ChatRequest, Completion, Finish, ProbeResult, Usage
from pollex.adapters.http import (
    HttpAdapter,
    parse_errors,
    post_json,
    read_error_body,
    status_error,
    streaming_post,
    upstream_message,
)
from pollex.errors import UpstreamError
from pollex.parsing import NDJSONDecoder

UPSTREAM = "ollama"


class OllamaAdapter(HttpAdapter):
    provider = "ollama"
    label = "Ollama"
    default_model = "qwen2.5:1.5b"

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

    async def stream(self, chat: ChatRequest, finish: Finish) -> AsyncGenerator[str, None]:
        url = f"{self._base}/api/chat"
        body = self._body(chat, stream=True)
        async with streaming_post(self._session, url, body, UPSTREAM, _status_error) as resp:
            decoder = NDJSONDecoder(self._max_line)
            while True:
                chunk = await resp.content.readany()
                with parse_errors():
                    # At EOF, close() still parses a last line that lacks its newline.
                    objects = decoder.feed(chunk) if chunk else decoder.close()
                for obj in objects:
                    text = _object_text(obj)
                    if text:
                        yield text
                    if _finished(obj, finish):
                        return
                if not chunk:
                    raise UpstreamError(f"{UPSTREAM} stream ended before done", kind="protocol")

    async def complete(self, chat: ChatRequest) -> Completion:
        url = f"{self._base}/api/chat"
        body = self._body(chat, stream=False)
        data = await post_json(self._session, url, body, UPSTREAM, _status_error, self._max_line)
        text = _object_text(data)
        if not text:
            raise UpstreamError(f"{UPSTREAM} answered with empty content", kind="protocol")
        finish = Finish()
        _fill_finish(finish, data)
        return Completion(text, finish)

    def _body(self, chat: ChatRequest, stream: bool) -> dict[str, Any]:
        return {
            "model": self.id,
            "messages": [{"role": m.role, "content": m.content} for m in chat.messages],
            "stream": stream,
            "options": {"temperature": chat.temperature, "num_predict": chat.max_tokens},
        }


def _object_text(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        raise UpstreamError(f"{UPSTREAM} sent JSON that is not an object", kind="protocol")
    error = obj.get("error")
    if error is not None:
        raise UpstreamError(f"{UPSTREAM}: {error}", kind="status", marks_down=False)
    message = obj.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, str) else None


def _finished(obj: dict[str, Any], finish: Finish) -> bool:
    if obj.get("done") is not True:
        return False
    _fill_finish(finish, obj)
    return True


def _fill_finish(finish: Finish, obj: dict[str, Any]) -> None:
    finish.reason = obj.get("done_reason") or "stop"
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


async def _status_error(resp: aiohttp.ClientResponse) -> UpstreamError:
    body, raw = await read_error_body(resp)
    message = upstream_message(body, raw, _message)
    if resp.status >= 500 or resp.status == 404:
        # 404 is "model not found": this backend cannot serve, another one may.
        return status_error(UPSTREAM, resp.status, message, failover=True, marks_down=True)
    return status_error(UPSTREAM, resp.status, message, failover=False, marks_down=False)
