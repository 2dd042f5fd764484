"""Settings: YAML file, then POLLEX_* environment, then flags; errors name key and source."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from pollex.config import Config, ConfigError, load_config


@pytest.fixture
def write(tmp_path: Path) -> Any:
    def write(text: str, name: str = "pollex.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


def test_defaults_with_nothing_given() -> None:
    config = load_config(None, env={})
    assert config == Config()
    assert config.host == "127.0.0.1"
    assert config.port == 8090
    assert config.fallback == ("llamacpp", "ollama")
    assert not config.has_backend()


def test_file_only(write: Any) -> None:
    path = write(
        "host: 0.0.0.0\n"
        "port: 9000\n"
        "llamacpp_url: http://127.0.0.1:8080\n"
        "llamacpp_model: qwen2.5:1.5b-gpu\n"
        "fallback: [llamacpp, ollama, claude]\n"
        "idle_timeout_s: 5\n"
        "trust_proxy_headers: true\n"
        "log_format: console\n"
    )
    config = load_config(path, env={})
    assert config.host == "0.0.0.0"
    assert config.port == 9000
    assert config.llamacpp_url == ("http://127.0.0.1:8080",)  # one URL: a list of one
    assert config.llamacpp_model == "qwen2.5:1.5b-gpu"
    assert config.fallback == ("llamacpp", "ollama", "claude")
    assert config.idle_timeout_s == 5.0
    assert isinstance(config.idle_timeout_s, float)
    assert config.trust_proxy_headers is True
    assert config.log_format == "console"
    assert config.has_backend()
    # Everything not in the file keeps its default.
    assert config.ollama_model == Config().ollama_model


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_file_means_defaults(write: Any, text: str) -> None:
    assert load_config(write(text), env={}) == Config()


def test_env_overrides_file(write: Any) -> None:
    path = write("port: 9000\nhost: 0.0.0.0\nollama_url: http://file\n")
    config = load_config(path, env={"POLLEX_PORT": "9100", "POLLEX_OLLAMA_URL": "http://env"})
    assert config.port == 9100
    assert config.ollama_url == ("http://env",)
    assert config.host == "0.0.0.0"  # not overridden


def test_flags_override_env_and_file(write: Any) -> None:
    path = write("port: 9000\nhost: 0.0.0.0\n")
    config = load_config(
        path,
        env={"POLLEX_PORT": "9100", "POLLEX_HOST": "10.0.0.1"},
        flags={"port": 9200, "host": None, "mock": True},
    )
    assert config.port == 9200
    assert config.host == "10.0.0.1"  # a flag left as None does not override
    assert config.mock is True


def test_flag_of_wrong_type_names_command_line() -> None:
    with pytest.raises(ConfigError, match=r"command line: port must be a whole number"):
        load_config(None, env={}, flags={"port": "80"})


def test_unknown_key_in_file_names_key_and_path(write: Any) -> None:
    path = write("port: 9000\nlamacpp_url: http://127.0.0.1:8080\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert "lamacpp_url" in message
    assert str(path) in message


def test_non_string_key_in_file(write: Any) -> None:
    path = write("1: one\n")
    with pytest.raises(ConfigError, match="unknown setting 1"):
        load_config(path, env={})


def test_unknown_pollex_env_var() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"POLLEX_PROT": "9000"})
    assert "POLLEX_PROT" in str(info.value)
    assert "unknown setting" in str(info.value)


def test_other_env_vars_are_ignored() -> None:
    config = load_config(None, env={"PORT": "1", "HOME": "/root", "pollex_port": "2"})
    assert config.port == 8090


def test_pollex_url_belongs_to_the_client_and_is_ignored() -> None:
    config = load_config(None, env={"POLLEX_URL": "http://127.0.0.1:8090"})
    assert config == Config()


@pytest.mark.parametrize(
    ("yaml_text", "key", "expected"),
    [
        ('port: "8090"', "port", "whole number"),
        ("port: true", "port", "whole number"),
        ("port: 80.5", "port", "whole number"),
        ("max_text_chars: [1]", "max_text_chars", "whole number"),
        ("idle_timeout_s: soon", "idle_timeout_s", "number"),
        ("idle_timeout_s: false", "idle_timeout_s", "number"),
        ("host: [a, b]", "host", "string"),
        ("llamacpp_url: 8080", "llamacpp_url", "list of URLs"),
        ("llamacpp_url: [http://a, 8080]", "llamacpp_url", "list of URLs"),
        ("api_key: {a: 1}", "api_key", "string"),
        ("trust_proxy_headers: yes please", "trust_proxy_headers", "true or false"),
        ("trust_proxy_headers: 1", "trust_proxy_headers", "true or false"),
        ("fallback: llamacpp", "fallback", "list"),
        ("fallback: [llamacpp, 3]", "fallback", "list"),
        ("fallback: [llamacpp, gpt]", "fallback", "unknown provider 'gpt'"),
        ("log_format: xml", "log_format", "json or console"),
    ],
)
def test_wrong_type_in_file_names_key_and_file(
    write: Any, yaml_text: str, key: str, expected: str
) -> None:
    path = write(yaml_text + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert key in message
    assert str(path) in message
    assert expected in message


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("POLLEX_PORT", "eighty", "must be a number"),
        ("POLLEX_PORT", "80.5", "must be a number"),
        ("POLLEX_PORT", "", "must be a number"),
        ("POLLEX_IDLE_TIMEOUT_S", "soon", "must be a number"),
        ("POLLEX_TRUST_PROXY_HEADERS", "maybe", "true or false"),
        ("POLLEX_FALLBACK", "llamacpp,gpt", "unknown provider 'gpt'"),
        ("POLLEX_LOG_FORMAT", "xml", "json or console"),
    ],
)
def test_wrong_env_value_names_the_variable(name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={name: value})
    assert name in str(info.value)
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("name", "value", "key", "expected"),
    [
        ("POLLEX_PORT", "9001", "port", 9001),
        ("POLLEX_PORT", " 9001 ", "port", 9001),
        ("POLLEX_MAX_BODY_BYTES", "1024", "max_body_bytes", 1024),
        ("POLLEX_IDLE_TIMEOUT_S", "2.5", "idle_timeout_s", 2.5),
        ("POLLEX_PROBE_INTERVAL_S", "3", "probe_interval_s", 3.0),
        ("POLLEX_FIRST_TOKEN_TIMEOUT_S", "30", "first_token_timeout_s", 30.0),
        ("POLLEX_FIRST_TOKEN_TIMEOUT_S", "", "first_token_timeout_s", None),
        ("POLLEX_LLAMACPP_FIRST_TOKEN_TIMEOUT_S", "", "llamacpp_first_token_timeout_s", None),
        ("POLLEX_TRUST_PROXY_HEADERS", "true", "trust_proxy_headers", True),
        ("POLLEX_TRUST_PROXY_HEADERS", "1", "trust_proxy_headers", True),
        ("POLLEX_TRUST_PROXY_HEADERS", "YES", "trust_proxy_headers", True),
        ("POLLEX_TRUST_PROXY_HEADERS", "on", "trust_proxy_headers", True),
        ("POLLEX_TRUST_PROXY_HEADERS", "false", "trust_proxy_headers", False),
        ("POLLEX_TRUST_PROXY_HEADERS", "0", "trust_proxy_headers", False),
        ("POLLEX_TRUST_PROXY_HEADERS", "off", "trust_proxy_headers", False),
        ("POLLEX_TRUST_PROXY_HEADERS", "", "trust_proxy_headers", False),
        ("POLLEX_MOCK", "true", "mock", True),
        ("POLLEX_FALLBACK", "ollama,llamacpp", "fallback", ("ollama", "llamacpp")),
        ("POLLEX_FALLBACK", " ollama , claude ,", "fallback", ("ollama", "claude")),
        ("POLLEX_FALLBACK", "", "fallback", ()),
        ("POLLEX_LLAMACPP_URL", "", "llamacpp_url", ()),
        ("POLLEX_LLAMACPP_URL", "http://a:8080", "llamacpp_url", ("http://a:8080",)),
        ("POLLEX_OLLAMA_URL", "http://a, http://b,", "ollama_url", ("http://a", "http://b")),
        ("POLLEX_HOST", "0.0.0.0", "host", "0.0.0.0"),
        ("POLLEX_LOG_FORMAT", "console", "log_format", "console"),
        ("POLLEX_CLAUDE_API_KEY", "sk-ant-x", "claude_api_key", "sk-ant-x"),
    ],
)
def test_env_values_are_coerced(name: str, value: str, key: str, expected: Any) -> None:
    config = load_config(None, env={name: value})
    assert getattr(config, key) == expected
    assert type(getattr(config, key)) is type(expected)


def test_empty_env_clears_an_optional_value_from_the_file(write: Any) -> None:
    path = write("first_token_timeout_s: 30\n")
    assert load_config(path, env={}).first_token_timeout_s == 30.0
    config = load_config(path, env={"POLLEX_FIRST_TOKEN_TIMEOUT_S": ""})
    assert config.first_token_timeout_s is None


def test_null_in_file_for_an_optional_value(write: Any) -> None:
    path = write("first_token_timeout_s: null\n")
    assert load_config(path, env={}).first_token_timeout_s is None


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"port": -1}, "port must be between 0 and 65535"),
        ({"port": 70000}, "port must be between 0 and 65535"),
        ({"idle_timeout_s": 0}, "idle_timeout_s must be greater than 0"),
        ({"max_text_chars": -5}, "max_text_chars must be greater than 0"),
        ({"first_token_timeout_s": 0}, "first_token_timeout_s must be greater than 0"),
        ({"max_queue_wait_s": -1}, "max_queue_wait_s must not be negative"),
        ({"log_level": "chatty"}, "log_level must be one of"),
    ],
)
def test_out_of_range_values(write: Any, settings: dict[str, Any], expected: str) -> None:
    path = write("".join(f"{k}: {v}\n" for k, v in settings.items()))
    with pytest.raises(ConfigError, match=expected):
        load_config(path, env={})


def test_port_zero_is_allowed() -> None:
    assert load_config(None, env={"POLLEX_PORT": "0"}).port == 0


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="config file not found") as info:
        load_config(path, env={})
    assert str(path) in str(info.value)


def test_file_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path, env={})


def test_file_not_utf8(write: Any, tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"host: caf\xe9\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(path, env={})


@pytest.mark.parametrize("text", ["port: [1, 2\n", "host: a\n  b: c\n", "key: 'open\n", "\t- x\n"])
def test_invalid_yaml(write: Any, text: str) -> None:
    path = write(text)
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(path, env={})
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text", ["- port\n- 9000\n", "just a string\n", "42\n"])
def test_non_mapping_yaml(write: Any, text: str) -> None:
    path = write(text)
    with pytest.raises(ConfigError, match="must be a mapping") as info:
        load_config(path, env={})
    assert str(path) in str(info.value)


# --- api_key_file ----------------------------------------------------------------------


def test_api_key_file_is_read_and_stripped(write: Any) -> None:
    key_file = write("  s3cret-key\n\n", name="key")
    config = load_config(write(f"api_key_file: {key_file}\n"), env={})
    assert config.api_key == "s3cret-key"


def test_api_key_file_from_env(write: Any) -> None:
    key_file = write("env-key\n", name="key")
    config = load_config(None, env={"POLLEX_API_KEY_FILE": str(key_file)})
    assert config.api_key == "env-key"


def test_api_key_wins_over_api_key_file(write: Any, tmp_path: Path) -> None:
    # An explicit key makes the file irrelevant, even one that does not exist.
    config = load_config(
        None,
        env={"POLLEX_API_KEY": "direct", "POLLEX_API_KEY_FILE": str(tmp_path / "missing")},
    )
    assert config.api_key == "direct"


def test_api_key_file_missing(tmp_path: Path) -> None:
    missing = tmp_path / "missing-key"
    with pytest.raises(ConfigError, match="api_key_file") as info:
        load_config(None, env={"POLLEX_API_KEY_FILE": str(missing)})
    assert str(missing) in str(info.value)


@pytest.mark.parametrize("content", ["", "\n", "   \n\t\n"])
def test_api_key_file_empty(write: Any, content: str) -> None:
    key_file = write(content, name="key")
    with pytest.raises(ConfigError, match="is empty") as info:
        load_config(None, env={"POLLEX_API_KEY_FILE": str(key_file)})
    assert "api_key_file" in str(info.value)


def test_api_key_file_not_utf8(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ConfigError, match="api_key_file"):
        load_config(None, env={"POLLEX_API_KEY_FILE": str(key_file)})


# --- redaction -------------------------------------------------------------------------


def test_redacted_hides_secrets(write: Any) -> None:
    key_file = write("file-secret\n", name="key")
    config = load_config(
        None,
        env={"POLLEX_API_KEY_FILE": str(key_file), "POLLEX_CLAUDE_API_KEY": "sk-ant-secret"},
    )
    data = config.redacted()
    assert data["api_key"] == "<redacted>"
    assert data["claude_api_key"] == "<redacted>"
    assert data["api_key_file"] == str(key_file)  # a path is not a secret
    text = repr(data)
    assert "file-secret" not in text
    assert "sk-ant-secret" not in text
    # Plain data: the list form of fallback and the URL lists, every field present.
    assert data["fallback"] == ["llamacpp", "ollama"]
    assert data["llamacpp_url"] == data["ollama_url"] == []
    assert set(data) == {f.name for f in dataclasses.fields(Config)}


def test_redacted_leaves_empty_secrets_empty() -> None:
    data = Config().redacted()
    assert data["api_key"] == ""
    assert data["claude_api_key"] == ""


# --- first-token timeouts --------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, {"llamacpp": 120.0, "ollama": 60.0, "claude": 60.0, "mock": 60.0}),
        (
            {"first_token_timeout_s": 30},
            {"llamacpp": 30.0, "ollama": 30.0, "claude": 30.0, "mock": 30.0},
        ),
        (
            {"llamacpp_first_token_timeout_s": 200},
            {"llamacpp": 200.0, "ollama": 60.0, "claude": 60.0, "mock": 60.0},
        ),
        (
            {"first_token_timeout_s": 30, "ollama_first_token_timeout_s": 90},
            {"llamacpp": 30.0, "ollama": 90.0, "claude": 30.0, "mock": 30.0},
        ),
        (
            {"claude_first_token_timeout_s": 10, "llamacpp_first_token_timeout_s": 5},
            {"llamacpp": 5.0, "ollama": 60.0, "claude": 10.0, "mock": 60.0},
        ),
    ],
)
def test_first_token_timeout(
    write: Any, settings: dict[str, Any], expected: dict[str, float]
) -> None:
    path = write("".join(f"{k}: {v}\n" for k, v in settings.items()))
    config = load_config(path, env={})
    assert {p: config.first_token_timeout(p) for p in expected} == expected


def test_first_token_timeout_from_env() -> None:
    config = load_config(
        None,
        env={"POLLEX_FIRST_TOKEN_TIMEOUT_S": "45", "POLLEX_OLLAMA_FIRST_TOKEN_TIMEOUT_S": "7.5"},
    )
    assert config.first_token_timeout("llamacpp") == 45.0
    assert config.first_token_timeout("ollama") == 7.5


@pytest.mark.parametrize("key", ["llamacpp_model", "ollama_model", "claude_model", "claude_url"])
def test_an_empty_model_or_url_falls_back_to_its_default(key: str) -> None:
    config = load_config(env={f"POLLEX_{key.upper()}": ""})
    assert getattr(config, key) == getattr(Config(), key) != ""
