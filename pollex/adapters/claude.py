"""Anthropic's Messages API (SSE with named events). Opt-in: it sends text off the machine."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp

from pollex.adapters import ChatRequest, Finish, ProbeResult, Usage
from pollex.adapters.http import (
    DETAIL_LIMIT,
    HttpAdapter,
    log,
    read_error_body,
    status_error,
    upstream_message,
)
from pollex.errors import UpstreamError
from pollex.parsing import SSEDecoder, SSEEvent

UPSTREAM = "anthropic"
API_VERSION = "2023-06-01"
# HTTP statuses worth trying another backend for (docs/upstreams.md).
_RETRYABLE = frozenset({408, 409, 429, 529})
_ERROR_TYPE = re.compile(r"[a-z_]{1,40}")


class ClaudeAdapter(HttpAdapter):
    provider = "claude"
    label = "Claude"
    upstream = UPSTREAM
    end_marker = "message_stop"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        model: str,
        *,
        api_key: str,
        first_token_timeout_s: float,
        max_line_bytes: int,
    ) -> None:
        super().__init__(
            session,
            url,
            model,
            first_token_timeout_s=first_token_timeout_s,
            max_line_bytes=max_line_bytes,
        )
        self._api_key = api_key
        self._key_rejected = False

    async def probe(self) -> ProbeResult:
        if not self._api_key:
            return ProbeResult(False, "no API key")
        if self._key_rejected:
            return ProbeResult(False, "API key rejected")
        return ProbeResult(True)

    def stream(self, chat: ChatRequest, finish: Finish) -> AsyncGenerator[str, None]:
        system = "\n\n".join(m.content for m in chat.messages if m.role == "system")
        body: dict[str, Any] = {
            "model": self.id,
            "max_tokens": chat.max_tokens,
            "messages": [
                {"role": m.role, "content": m.content}
                for m in chat.messages
                if m.role in ("user", "assistant")
            ],
            "stream": True,
            "temperature": 0,
        }
        if system:
            body["system"] = system
        decoder = SSEDecoder(self._max_line)
        return self._read_stream("/v1/messages", body, decoder, _read_event, finish)

    async def _status_error(self, resp: aiohttp.ClientResponse) -> UpstreamError:
        body, raw = await read_error_body(resp)
        message = upstream_message(body, raw, _message)
        status = resp.status
        if status == 401:
            self._key_rejected = True
            return status_error(UPSTREAM, status, message, failover=False, marks_down=True)
        retryable = status >= 500 or status in _RETRYABLE
        return status_error(UPSTREAM, status, message, failover=retryable, marks_down=retryable)


def session_headers(api_key: str) -> dict[str, str]:
    """Headers every request of the adapter's session carries."""
    return {"x-api-key": api_key, "anthropic-version": API_VERSION}


def _read_event(event: SSEEvent, finish: Finish) -> str | None:
    try:
        data = json.loads(event.data)
    except ValueError:
        raise UpstreamError(f"{UPSTREAM} sent an event that is not JSON", kind="protocol") from None
    if not isinstance(data, dict):
        raise UpstreamError(f"{UPSTREAM} sent JSON that is not an object", kind="protocol")
    kind = event.event if event.event != "message" else data.get("type")
    if kind == "content_block_delta":
        delta = data.get("delta") or {}
        text = delta.get("text")
        if delta.get("type") == "text_delta" and isinstance(text, str):
            return text
    elif kind == "message_start":
        _start_usage(finish, data)
    elif kind == "message_delta":
        _delta_usage(finish, data)
    elif kind == "message_stop":
        finish.reason = finish.reason or "stop"
        finish.ended = True
    elif kind == "error":
        raise _stream_error(data)
    return None


def _message(body: Any) -> str | None:
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) and message else None


def _stream_error(data: dict[str, Any]) -> UpstreamError:
    """`event: error` mid-answer. Its type is one of Anthropic's names (a class of failure);
    its message may quote the request, so it goes to the debug log."""
    found = data.get("error")
    error: dict[str, Any] = found if isinstance(found, dict) else {}
    error_type = error.get("type")
    known = (
        error_type if isinstance(error_type, str) and _ERROR_TYPE.fullmatch(error_type) else None
    )
    overloaded = known in ("overloaded_error", "api_error", "rate_limit_error")
    log.debug("upstream_reported_error", upstream=UPSTREAM, detail=str(error)[:DETAIL_LIMIT])
    return UpstreamError(
        f"{UPSTREAM} reported {known or 'an error'}",
        kind="status",
        failover=overloaded,
        marks_down=overloaded,
    )


def _start_usage(finish: Finish, data: dict[str, Any]) -> None:
    usage = (data.get("message") or {}).get("usage") or {}
    if "input_tokens" in usage:
        finish.usage = Usage(int(usage["input_tokens"]), 0)


def _delta_usage(finish: Finish, data: dict[str, Any]) -> None:
    reason = (data.get("delta") or {}).get("stop_reason")
    if reason:
        finish.reason = "length" if reason == "max_tokens" else "stop"
    output = (data.get("usage") or {}).get("output_tokens")
    if output is not None:
        prompt = finish.usage.prompt_tokens if finish.usage else 0
        finish.usage = Usage(prompt, int(output))
