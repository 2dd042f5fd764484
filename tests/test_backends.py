"""Which backends a configuration registers, in which order (pollex.backends)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pollex.adapters.providers import chain_providers, open_backends, registered_providers
from pollex.config import Config, ConfigError, load_config

JETSON_CONFIG = Path(__file__).parents[1] / "jetson" / "config.yaml"


async def test_jetson_config_registers_llama_first_then_ollama() -> None:
    config = load_config(JETSON_CONFIG, env={})

    async with open_backends(config) as backends:
        assert [(b.provider, b.id) for b in backends.chain] == [
            ("llamacpp", "qwen2.5:1.5b-gpu"),
            ("ollama", "qwen2.5:1.5b"),
        ]
        assert [b.name for b in backends.listed()] == [
            "llama.cpp (qwen2.5:1.5b-gpu)",
            "Ollama (qwen2.5:1.5b)",
        ]
        # One host each, named host:port in health and metrics.
        assert [[h.host for h in b.hosts] for b in backends.chain] == [
            ["127.0.0.1:8080"],
            ["127.0.0.1:11434"],
        ]
        assert backends.hosts() == [*backends.chain[0].hosts, *backends.chain[1].hosts]
        gpu = backends.chain[0].hosts[0]
        assert gpu.first_token_timeout_s == config.llamacpp_first_token_timeout_s
        # Slots: llama-server's are learned from /props (else 1), Ollama's are the setting.
        assert [(b.slots_setting, b.slots_default) for b in backends.chain] == [(None, 1), (1, 1)]


@pytest.mark.parametrize(
    ("settings", "registered", "chain"),
    [
        ({"mock": True}, ["mock"], ["mock"]),
        ({"ollama_url": ("u",)}, ["ollama"], ["ollama"]),
        (
            {"llamacpp_url": ("u",), "ollama_url": ("u",)},
            ["llamacpp", "ollama"],
            ["llamacpp", "ollama"],
        ),
        (
            {"llamacpp_url": ("u",), "ollama_url": ("u",), "fallback": ("ollama", "llamacpp")},
            ["llamacpp", "ollama"],
            ["ollama", "llamacpp"],
        ),
        # Claude sends text off the machine: in the chain only when listed ...
        ({"llamacpp_url": ("u",), "claude_api_key": "k"}, ["llamacpp", "claude"], ["llamacpp"]),
        (
            {"llamacpp_url": ("u",), "claude_api_key": "k", "fallback": ("llamacpp", "claude")},
            ["llamacpp", "claude"],
            ["llamacpp", "claude"],
        ),
        # ... unless it is the only backend there is.
        ({"claude_api_key": "k"}, ["claude"], ["claude"]),
        ({"llamacpp_url": ("u",), "mock": True}, ["llamacpp", "mock"], ["llamacpp", "mock"]),
    ],
)
def test_registration_and_chain(
    settings: dict[str, Any], registered: list[str], chain: list[str]
) -> None:
    config = Config(**settings)

    assert registered_providers(config) == registered
    assert chain_providers(config) == chain


async def test_two_backends_with_one_id_are_refused() -> None:
    config = Config(
        llamacpp_url=("http://a",), llamacpp_model="m", ollama_url=("http://b",), ollama_model="m"
    )

    with pytest.raises(ConfigError, match="same model id 'm'"):
        async with open_backends(config):
            pass
