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

from pollex.adapters import Adapter, Backend, Backends
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
    """One kind of backend: where its hosts are, and how one host's adapter is built on the
    session it is handed (None for a provider that speaks no HTTP), whose requests all
    carry `headers`."""

    name: str
    urls: Callable[[Config], tuple[str, ...]]
    open: Callable[[Config, aiohttp.ClientSession | None, str], Adapter]
    http: bool = True
    headers: Callable[[Config], dict[str, str]] | None = None
    # Capacity per host (see `Backend`): the configured slots and context, and the slots
    # when neither the configuration nor the host says (None: no limit).
    slots: Callable[[Config], int | None] = lambda config: None
    slots_default: int | None = 1
    context: Callable[[Config], int | None] = lambda config: None


def _limits(config: Config, provider: str) -> dict[str, Any]:
    return {
        "first_token_timeout_s": config.first_token_timeout(provider),
        "max_line_bytes": config.max_upstream_line_bytes,
    }


def _session(session: aiohttp.ClientSession | None) -> aiohttp.ClientSession:
    assert session is not None, "an HTTP provider is opened with its session"
    return session


def _llamacpp(config: Config, session: aiohttp.ClientSession | None, url: str) -> Adapter:
    limits = _limits(config, "llamacpp")
    return LlamaCppAdapter(_session(session), url, config.llamacpp_model, **limits)


def _ollama(config: Config, session: aiohttp.ClientSession | None, url: str) -> Adapter:
    limits = _limits(config, "ollama")
    return OllamaAdapter(_session(session), url, config.ollama_model, **limits)


def _claude(config: Config, session: aiohttp.ClientSession | None, url: str) -> Adapter:
    limits = _limits(config, "claude")
    return ClaudeAdapter(
        _session(session), url, config.claude_model, api_key=config.claude_api_key, **limits
    )


def _mock(config: Config, session: aiohttp.ClientSession | None, url: str) -> Adapter:
    timeout = config.first_token_timeout("mock")
    return MockAdapter(first_token_timeout_s=timeout, delay_s=MOCK_WORD_DELAY_S)


TABLE = {
    p.name: p
    for p in (
        Provider("llamacpp", lambda c: c.llamacpp_url, _llamacpp, slots=lambda c: c.llamacpp_slots),
        Provider(
            "ollama",
            lambda c: c.ollama_url,
            _ollama,
            slots=lambda c: c.ollama_slots,
            context=lambda c: c.ollama_ctx,
        ),
        Provider(
            "claude",
            lambda c: (c.claude_url,),
            _claude,
            headers=lambda c: session_headers(c.claude_api_key),
            slots=lambda c: c.claude_slots,
            slots_default=None,
        ),
        Provider("mock", lambda c: ("",), _mock, http=False, slots_default=None),
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
    """Create an adapter per host, each with the one session it owns; close them on exit."""
    async with AsyncExitStack() as stack:
        by_provider: dict[str, Backend] = {}
        for name in registered_providers(config):
            provider = TABLE[name]
            hosts = []
            for url in provider.urls(config):
                session = None
                if provider.http:
                    headers = provider.headers(config) if provider.headers else None
                    session = await stack.enter_async_context(
                        make_session(config.connect_timeout_s, headers)
                    )
                hosts.append(provider.open(config, session, url))
            _check_hosts(name, hosts)
            by_provider[name] = Backend(
                tuple(hosts),
                slots_setting=provider.slots(config),
                slots_default=provider.slots_default,
                context_setting=provider.context(config),
            )
        ids = [b.id for b in by_provider.values()]
        duplicate = next((i for i in ids if ids.count(i) > 1), None)
        if duplicate is not None:
            raise ConfigError(f"two backends have the same model id {duplicate!r}")
        chain = [by_provider[p] for p in chain_providers(config)]
        yield Backends(list(by_provider.values()), chain)


def _check_hosts(provider: str, hosts: list[Adapter]) -> None:
    names = [h.host for h in hosts]
    repeated = next((n for n in names if names.count(n) > 1), None)
    if repeated is not None:
        raise ConfigError(f"{provider}_url lists the host {repeated} twice")
