"""The settings of issue 9: deadlines, CORS origins, trusted proxies, allowed hosts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pollex.config import Config, ConfigError, load_config


def from_file(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "pollex.yaml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, env={})


def test_defaults() -> None:
    config = Config()
    assert (config.header_timeout_s, config.body_timeout_s, config.keepalive_timeout_s) == (
        10.0,
        30.0,
        75.0,
    )
    assert config.cors_origin == ()  # no CORS headers at all
    assert config.trusted_proxies == ("127.0.0.1", "::1")
    assert config.allowed_hosts == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cors_origin: https://editor.example", ("https://editor.example",)),
        ("cors_origin: '*'", ("*",)),
        (
            "cors_origin: [https://A.example:8443, moz-extension://1234-abcd]",
            ("https://a.example:8443", "moz-extension://1234-abcd"),
        ),
    ],
)
def test_cors_origin_is_one_origin_or_a_list(tmp_path: Path, text: str, expected: Any) -> None:
    assert from_file(tmp_path, text).cors_origin == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cors_origin: https://a.example/", "is not an origin"),
        ("cors_origin: a.example", "is not an origin"),
        ("cors_origin: [https://a.example, 3]", "must be a list of origins"),
        ("trusted_proxies: [127.0.0.1, cloudflared]", "'cloudflared' is not an IP address"),
        ("trusted_proxies: 127.0.0.1", "must be a list of IP addresses or networks"),
        ("allowed_hosts: [http://nano.local]", "is not a host name"),
        ("header_timeout_s: 0", "header_timeout_s must be greater than 0"),
        ("body_timeout_s: soon", "body_timeout_s must be a number of seconds"),
    ],
)
def test_wrong_values_name_the_setting(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_file(tmp_path, text)


def test_lists_from_the_environment() -> None:
    config = load_config(
        None,
        env={
            "POLLEX_CORS_ORIGIN": "https://a.example, chrome-extension://abc",
            "POLLEX_TRUSTED_PROXIES": "127.0.0.1,10.0.0.0/8",
            "POLLEX_ALLOWED_HOSTS": "nano.local,Nano.lan:8090",
            "POLLEX_KEEPALIVE_TIMEOUT_S": "30",
        },
    )
    assert config.cors_origin == ("https://a.example", "chrome-extension://abc")
    assert config.trusted_proxies == ("127.0.0.1", "10.0.0.0/8")
    assert config.allowed_hosts == ("nano.local", "nano.lan:8090")
    assert config.keepalive_timeout_s == 30.0


def test_pollex_config_shows_them_as_plain_yaml(tmp_path: Path) -> None:
    config = from_file(tmp_path, "cors_origin: https://a.example\nallowed_hosts: [nano.local]\n")

    shown = yaml.safe_load(yaml.safe_dump(config.redacted()))

    assert shown["cors_origin"] == ["https://a.example"]
    assert shown["allowed_hosts"] == ["nano.local"]
    assert shown["trusted_proxies"] == ["127.0.0.1", "::1"]
    assert shown["header_timeout_s"] == 10.0
