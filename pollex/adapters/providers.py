"""The provider table: how each backend is opened, which ones the configuration turns on,
and the failover chain.

Adding a provider is a module in this package, its settings in `Config` (with their
defaults), and one row here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from pollex.adapters import Adapter, Backends
from pollex.adapters.claude import ClaudeAdapter, session_headers
from pollex.adapters.http import make_session
from pollex.adapters.llamacpp import LlamaCppAdapter
from pollex.adapters.mock import MockAdapter
from pollex.adapters.ollama import OllamaAdapter
from pollex.config import PROVIDERS, Config, ConfigError

# The mock's pace when served for people to watch: a word every 30 ms looks like a model.
MOCK_WORD_DELAY_S = 0.03


@dataclass(frozen=True)
class Provider:
    """One kind of backend. `open` builds its adapter on the session it is handed (None
    for a provider that speaks no HTTP); `headers` are what that session sends on every
    request."""

    name: str
    open: Callable[[Config, aiohttp.ClientSession | None], Adapter]
    http: bool = True
    headers: Callable[[Config], dict[str, str]] | None = None


def _limits(config: Config, provider: str) -> dict[str, Any]:
    return {
        "first_token_timeout_s": config.first_token_timeout(provider),
        "max_line_bytes": config.max_upstream_line_bytes,
    }


def _session(session: aiohttp.ClientSession | None) -> aiohttp.ClientSession:
    assert session is not None, "an HTTP provider is opened with its session"
    return session


TABLE = {
    p.name: p
    for p in (
        Provider(
            "llamacpp",
            lambda c, s: LlamaCppAdapter(
                _session(s), c.llamacpp_url, c.llamacpp_model, **_limits(c, "llamacpp")
            ),
        ),
        Provider(
            "ollama",
            lambda c, s: OllamaAdapter(
                _session(s), c.ollama_url, c.ollama_model, **_limits(c, "ollama")
            ),
        ),
        Provider(
            "claude",
            lambda c, s: ClaudeAdapter(
                _session(s),
                c.claude_url,
                c.claude_model,
                api_key=c.claude_api_key,
                **_limits(c, "claude"),
            ),
            headers=lambda c: session_headers(c.claude_api_key),
        ),
        Provider(
            "mock",
            lambda c, s: MockAdapter(
                first_token_timeout_s=c.first_token_timeout("mock"), delay_s=MOCK_WORD_DELAY_S
            ),
            http=False,
        ),
    )
}
assert tuple(TABLE) == PROVIDERS, "one row per provider, in the canonical order"


def registered_providers(config: Config) -> list[str]:
    """Providers with enough configuration to run, in the canonical order."""
    return [p for p in PROVIDERS if config.enables(p)]


def chain_providers(config: Config) -> list[str]:
    """The failover chain: `fallback` order, registered ones only.

    The mock, when on, comes last unless listed; if `fallback` names no registered
    provider, every registered one is used in the canonical order (a Claude-only setup
    needs no `fallback` key to work).
    """
    registered = registered_providers(config)
    chain = [p for p in config.fallback if p in registered]
    if "mock" in registered and "mock" not in chain:
        chain.append("mock")
    return chain or registered


@asynccontextmanager
async def open_backends(config: Config) -> AsyncIterator[Backends]:
    """Create each adapter with the one session it owns; close them all on exit."""
    async with AsyncExitStack() as stack:
        by_provider: dict[str, Adapter] = {}
        for name in registered_providers(config):
            provider = TABLE[name]
            session = None
            if provider.http:
                headers = provider.headers(config) if provider.headers else None
                session = await stack.enter_async_context(
                    make_session(config.connect_timeout_s, headers)
                )
            by_provider[name] = provider.open(config, session)
        ids = [a.id for a in by_provider.values()]
        duplicate = next((i for i in ids if ids.count(i) > 1), None)
        if duplicate is not None:
            raise ConfigError(f"two backends have the same model id {duplicate!r}")
        chain = [by_provider[p] for p in chain_providers(config)]
        yield Backends(list(by_provider.values()), chain)
