"""Settings: a YAML file, then `POLLEX_*` environment variables, then command-line flags.

Every key is a field of `Config`; its annotation is the type the loader enforces, so an
unknown key or a value of the wrong type fails at start-up with a message that names the
key and where it came from, instead of surfacing as a confusing error mid-request.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pollex import addresses

# Every backend pollex can speak, in the canonical order. Each has its settings below
# (`<provider>_...`) and a row in pollex.adapters.providers that says how it is opened.
PROVIDERS = ("llamacpp", "ollama", "claude", "mock")
SECRET_KEYS = frozenset({"api_key", "claude_api_key"})
ENV_PREFIX = "POLLEX_"
# Variables of the `pollex polish` client that share the prefix but are not server settings.
CLIENT_ENV = frozenset({"POLLEX_URL"})
_FIRST_TOKEN_DEFAULTS = {"llamacpp": 120.0, "ollama": 60.0, "claude": 60.0, "mock": 60.0}
# What the items of each list setting are, for error messages.
_LIST_ITEMS = {
    "fallback": "provider names",
    "llamacpp_url": "URLs",
    "ollama_url": "URLs",
    "cors_origin": "origins",
    "trusted_proxies": "IP addresses or networks",
    "allowed_hosts": "host names",
}
# List settings where a single value may be written without the list around it.
_ONE_OR_MORE = frozenset({"llamacpp_url", "ollama_url", "cors_origin"})
# Numbers that may be 0 (every other number must be greater than 0).
_MAY_BE_ZERO = frozenset({"port", "max_queue_wait_s"})
# Settings that fall back to their default when given empty (a blank environment variable).
_DEFAULT_WHEN_EMPTY = ("llamacpp_model", "ollama_model", "claude_model", "claude_url")
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class ConfigError(Exception):
    """A setting is missing, unknown or of the wrong type; the message says which and where."""


@dataclasses.dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8090
    mock: bool = False

    llamacpp_url: tuple[str, ...] = ()
    llamacpp_model: str = "llama.cpp"
    ollama_url: tuple[str, ...] = ()
    ollama_model: str = "qwen2.5:1.5b"
    claude_api_key: str = ""
    claude_model: str = "claude-sonnet-4-5"
    claude_url: str = "https://api.anthropic.com"
    fallback: tuple[str, ...] = ("llamacpp", "ollama")
    prompt_path: str = ""

    api_key: str = ""
    api_key_file: str = ""
    rate_limit_per_minute: int = 10
    trust_proxy_headers: bool = False
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    allowed_hosts: tuple[str, ...] = ()
    cors_origin: tuple[str, ...] = ()

    # Capacity (docs/architecture.md, "Capacity"): slots per host, None = learned from the
    # host (llama-server's /props), else 1; Claude: None = unlimited.
    llamacpp_slots: int | None = None
    ollama_slots: int = 1
    claude_slots: int | None = None
    ollama_ctx: int = 2048
    max_queue: int = 16
    max_queue_wait_s: float = 10.0

    probe_interval_s: float = 5.0
    probe_interval_down_s: float = 1.0
    probe_timeout_s: float = 2.0
    connect_timeout_s: float = 2.0
    first_token_timeout_s: float | None = None
    llamacpp_first_token_timeout_s: float | None = None
    ollama_first_token_timeout_s: float | None = None
    claude_first_token_timeout_s: float | None = None
    idle_timeout_s: float = 60.0
    request_timeout_s: float = 120.0
    stream_timeout_s: float = 600.0
    keepalive_s: float = 15.0
    shutdown_grace_s: float = 20.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keepalive_timeout_s: float = 75.0

    max_body_bytes: int = 65536
    max_text_chars: int = 10000
    max_output_tokens: int = 1024
    max_output_chars: int = 40000
    max_upstream_line_bytes: int = 1048576

    log_format: Literal["json", "console"] = "json"
    log_level: str = "info"

    def first_token_timeout(self, provider: str) -> float:
        """The first-token timeout of one provider: its own key, else the shared one."""
        own = getattr(self, f"{provider}_first_token_timeout_s", None)
        if own is not None:
            return float(own)
        if self.first_token_timeout_s is not None:
            return self.first_token_timeout_s
        return _FIRST_TOKEN_DEFAULTS[provider]

    def has_backend(self) -> bool:
        return any(self.enables(provider) for provider in PROVIDERS)

    def enables(self, provider: str) -> bool:
        """Whether `provider` has enough configuration to run."""
        switch = {
            "llamacpp": self.llamacpp_url,
            "ollama": self.ollama_url,
            "claude": self.claude_api_key,
            "mock": self.mock,
        }
        return bool(switch[provider])

    def redacted(self) -> dict[str, Any]:
        """All settings as plain data, secrets replaced, for `pollex config` and logs."""
        data = dataclasses.asdict(self)
        for key in SECRET_KEYS:
            if data[key]:
                data[key] = "<redacted>"
        return {key: list(v) if isinstance(v, tuple) else v for key, v in data.items()}


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_DEFAULTS = Config()
_HINTS = typing.get_type_hints(Config)

NO_BACKEND_MESSAGE = (
    "pollex: no backend configured. Set llamacpp_url (e.g. http://127.0.0.1:8080), "
    "ollama_url (e.g. http://127.0.0.1:11434) or claude_api_key in the config file or as "
    "POLLEX_LLAMACPP_URL / POLLEX_OLLAMA_URL / POLLEX_CLAUDE_API_KEY, or pass --mock."
)


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """Merge file, environment and flags (later wins) into a validated `Config`."""
    values: dict[str, Any] = {}
    if path is not None:
        values.update(_from_file(Path(path)))
    values.update(_from_env(os.environ if env is None else env))
    for key, value in (flags or {}).items():
        if value is not None:
            values[key] = _coerce(key, value, "command line")
    values = _read_api_key_file(values)
    return _validated(Config(**values))


def _from_file(path: Path) -> dict[str, Any]:
    import yaml  # here, not at the top: a service configured by environment never loads it

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings")
    source = str(path)
    return {_known(key, source): _coerce(key, value, source) for key, value in raw.items()}


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, text in env.items():
        if not name.startswith(ENV_PREFIX) or name in CLIENT_ENV:
            continue
        key = _known(name[len(ENV_PREFIX) :].lower(), f"environment variable {name}")
        values[key] = _coerce(key, _parse_env(key, text, name), f"environment variable {name}")
    return values


def _known(key: object, source: str) -> str:
    if not isinstance(key, str) or key not in _FIELDS:
        raise ConfigError(f"{source}: unknown setting {key!r}")
    return key


def _parse_env(key: str, text: str, name: str) -> Any:
    """Environment values are strings; turn them into the field's type before checking."""
    kind = _base_type(_HINTS[key])
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"environment variable {name}: {key} must be true or false")
    if kind in (int, float):
        if text.strip() == "" and _optional(_HINTS[key]):
            return None
        try:
            return kind(text)
        except ValueError:
            raise ConfigError(f"environment variable {name}: {key} must be a number") from None
    if kind is tuple:
        return [part.strip() for part in text.split(",") if part.strip()]
    return text


def _optional(hint: Any) -> bool:
    return isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)


def _base_type(hint: Any) -> Any:
    if isinstance(hint, types.UnionType):
        return next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) is Literal:
        return str
    return typing.get_origin(hint) or hint


def _coerce(key: str, value: Any, source: str) -> Any:
    hint = _HINTS[key]
    if value is None and _optional(hint):
        return None
    kind = _base_type(hint)
    where = f"{source}: {key}"
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, not {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be a whole number, not {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number of seconds, not {value!r}")
        return float(value)
    if kind is tuple:
        return _coerce_list(key, value, where)
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, not {value!r}")
    choices = typing.get_args(hint) if typing.get_origin(hint) is Literal else ()
    if choices and value not in choices:
        raise ConfigError(f"{where} must be {' or '.join(choices)}, not {value!r}")
    return value


def _coerce_list(key: str, value: Any, where: str) -> tuple[str, ...]:
    """A list of strings; for the keys of `_ONE_OR_MORE`, one string is a list of one."""
    if isinstance(value, str) and key in _ONE_OR_MORE:
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of {_LIST_ITEMS[key]}, not {value!r}")
    value = [v.strip() for v in value if v.strip()]  # `llamacpp_url: ""` is no host
    check = _LIST_CHECKS.get(key)
    try:
        return tuple(check(value) if check else value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _providers(value: list[str]) -> list[str]:
    unknown = [p for p in value if p not in PROVIDERS]
    if unknown:
        raise ValueError(f"unknown provider {unknown[0]!r} (known: {', '.join(PROVIDERS)})")
    return value


_LIST_CHECKS: dict[str, Callable[[list[str]], list[str]]] = {
    "fallback": _providers,
    "llamacpp_url": addresses.base_urls,
    "ollama_url": addresses.base_urls,
    "cors_origin": addresses.origins,
    "trusted_proxies": addresses.networks,
    "allowed_hosts": addresses.host_names,
}


def _read_api_key_file(values: dict[str, Any]) -> dict[str, Any]:
    key_file = values.get("api_key_file")
    if not key_file or values.get("api_key"):
        return values
    try:
        key = Path(key_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"api_key_file: cannot read {key_file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"api_key_file: {key_file} is not UTF-8 text") from None
    if not key:
        raise ConfigError(f"api_key_file: {key_file} is empty")
    return {**values, "api_key": key}


def _validated(config: Config) -> Config:
    # Providers in `fallback` and `log_format`'s choices are checked by `_coerce`, where
    # the source of the value is still known.
    if config.log_level.lower() not in _LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(_LOG_LEVELS)}")
    empty: dict[str, Any] = {
        key: getattr(_DEFAULTS, key) for key in _DEFAULT_WHEN_EMPTY if not getattr(config, key)
    }
    if empty:
        config = dataclasses.replace(config, **empty)
    if not 0 <= config.port <= 65535:
        raise ConfigError(f"port must be between 0 and 65535, not {config.port}")
    for name, field_hint in _HINTS.items():
        value = getattr(config, name)
        kind = _base_type(field_hint)
        if kind not in (int, float) or value is None:
            continue
        if name in _MAY_BE_ZERO and value < 0:
            raise ConfigError(f"{name} must not be negative, not {value}")
        if name not in _MAY_BE_ZERO and value <= 0:
            raise ConfigError(f"{name} must be greater than 0, not {value}")
    return config
