"""What tests share besides fixtures: fast settings, adapter factories, SSE readers.

Fixtures live in conftest.py; everything a test imports by name lives here.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import httpx_sse
import pytest

from pollex.adapters import Adapter, ChatRequest, Finish
from pollex.adapters.claude import ClaudeAdapter
from pollex.adapters.llamacpp import LlamaCppAdapter
from pollex.adapters.mock import MockAdapter
from pollex.adapters.ollama import OllamaAdapter
from pollex.config import Config, load_config
from pollex.errors import UpstreamError

# Small intervals so failover, recovery and keep-alive are seen in milliseconds.
FAST = {
    "probe_interval_s": 0.05,
    "probe_interval_down_s": 0.02,
    "probe_timeout_s": 0.3,
    "connect_timeout_s": 0.5,
    "keepalive_s": 5.0,
    "first_token_timeout_s": 5.0,
    "idle_timeout_s": 5.0,
    "request_timeout_s": 10.0,
    "stream_timeout_s": 10.0,
    "log_format": "console",
    "rate_limit_per_minute": 10000,
}


def fast_config(**overrides: Any) -> Config:
    """Settings as `pollex serve` would read them (same coercion and checks), made fast."""
    return load_config(env={}, flags={**FAST, **overrides})


# --- adapters, built with the defaults of Config ----------------------------------------

DEFAULTS = Config()
SYSTEM = "Fix grammar. Output only the corrected text."
TEXT = "i goes to store yesterday"
CHAT = ChatRequest.polish(TEXT, SYSTEM, 64)


def _limits(provider: str, overrides: dict[str, Any]) -> dict[str, Any]:
    limits: dict[str, Any] = {
        "first_token_timeout_s": DEFAULTS.first_token_timeout(provider),
        "max_line_bytes": DEFAULTS.max_upstream_line_bytes,
    }
    return {**limits, **overrides}


def llamacpp(
    session: aiohttp.ClientSession, url: str, model: str = DEFAULTS.llamacpp_model, **limits: Any
) -> LlamaCppAdapter:
    return LlamaCppAdapter(session, url, model, **_limits("llamacpp", limits))


def ollama(
    session: aiohttp.ClientSession, url: str, model: str = DEFAULTS.ollama_model, **limits: Any
) -> OllamaAdapter:
    return OllamaAdapter(session, url, model, **_limits("ollama", limits))


def claude(
    session: aiohttp.ClientSession,
    url: str,
    model: str = "claude-test",
    *,
    api_key: str = "sk-ant-test",
    **limits: Any,
) -> ClaudeAdapter:
    return ClaudeAdapter(session, url, model, api_key=api_key, **_limits("claude", limits))


def mock_adapter(delay_s: float = 0.0, first_token_timeout_s: float = 60.0) -> MockAdapter:
    return MockAdapter(first_token_timeout_s=first_token_timeout_s, delay_s=delay_s)


async def collect(adapter: Adapter, chat: ChatRequest = CHAT) -> tuple[list[str], Finish]:
    finish = Finish()
    return [chunk async for chunk in adapter.stream(chat, finish)], finish


async def collect_error(adapter: Adapter) -> tuple[list[str], UpstreamError]:
    """The chunks that arrived before the stream failed, and the failure."""
    chunks: list[str] = []
    with pytest.raises(UpstreamError) as info:
        async for chunk in adapter.stream(CHAT, Finish()):
            chunks.append(chunk)
    return chunks, info.value


# --- pollex's own SSE, read by a parser pollex did not write ----------------------------


@dataclasses.dataclass
class Event:
    event: str
    data: Any


async def sse_events(url: str, body: dict[str, Any], **headers: str) -> AsyncIterator[Event]:
    """Events of one SSE polish, read by httpx-sse."""
    async with (
        httpx.AsyncClient(timeout=10) as client,
        httpx_sse.aconnect_sse(client, "POST", url, json=body, headers=headers) as source,
    ):
        assert source.response.headers["content-type"].startswith("text/event-stream")
        async for sse in source.aiter_sse():
            yield Event(sse.event, json.loads(sse.data))


async def collect_events(url: str, body: dict[str, Any]) -> list[Event]:
    return [event async for event in sse_events(url, body)]


# --- pollex's own state, read in integration tests ------------------------------------


def routable(client: Any, model_id: str) -> bool:
    """Whether the router would send a request to `model_id` (some host of it is not
    known to be down)."""
    from pollex.web.keys import BACKENDS, ROUTER

    app = client.app
    return bool(app[ROUTER].routable(app[BACKENDS].by_id[model_id]))
