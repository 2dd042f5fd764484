"""Which adapters the configuration registers, in which order, each with its own session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from pollex.adapters import Adapter
from pollex.adapters.claude import ClaudeAdapter, session_headers
from pollex.adapters.http import make_session
from pollex.adapters.llamacpp import LlamaCppAdapter
from pollex.adapters.mock import MockAdapter
from pollex.adapters.ollama import OllamaAdapter
from pollex.config import PROVIDERS, Config, ConfigError
from pollex.router import Backends

# The mock's pace when served for people to watch: a word every 30 ms looks like a model.
MOCK_WORD_DELAY_S = 0.03


def registered_providers(config: Config) -> list[str]:
    """Providers with enough configuration to run, in the canonical order."""
    enabled = {
        "llamacpp": bool(config.llamacpp_url),
        "ollama": bool(config.ollama_url),
        "claude": bool(config.claude_api_key),
        "mock": config.mock,
    }
    return [p for p in PROVIDERS if enabled[p]]


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
        for provider in registered_providers(config):
            by_provider[provider] = await _open(provider, config, stack)
        ids = [a.id for a in by_provider.values()]
        duplicate = next((i for i in ids if ids.count(i) > 1), None)
        if duplicate is not None:
            raise ConfigError(f"two backends have the same model id {duplicate!r}")
        chain = [by_provider[p] for p in chain_providers(config)]
        yield Backends(list(by_provider.values()), chain)


async def _open(provider: str, config: Config, stack: AsyncExitStack) -> Adapter:
    first_token = config.first_token_timeout(provider)
    line = config.max_upstream_line_bytes
    if provider == "mock":
        return MockAdapter(MOCK_WORD_DELAY_S, first_token_timeout_s=first_token)
    headers = session_headers(config.claude_api_key) if provider == "claude" else None
    session = await stack.enter_async_context(make_session(config.connect_timeout_s, headers))
    if provider == "llamacpp":
        return LlamaCppAdapter(
            session,
            config.llamacpp_url,
            config.llamacpp_model,
            first_token_timeout_s=first_token,
            max_line_bytes=line,
        )
    if provider == "ollama":
        return OllamaAdapter(
            session,
            config.ollama_url,
            config.ollama_model,
            first_token_timeout_s=first_token,
            max_line_bytes=line,
        )
    return ClaudeAdapter(
        session,
        config.claude_api_key,
        config.claude_model,
        config.claude_url,
        first_token_timeout_s=first_token,
        max_line_bytes=line,
    )
