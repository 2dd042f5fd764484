"""Static checks of the jetson/ scripts and config: shellcheck, strict mode, config keys."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import words

from pollex.config import Config

JETSON = Path(__file__).resolve().parents[2] / "jetson"
SCRIPTS = [JETSON / name for name in ("build-llamacpp.sh", "deploy.sh", "install-pollex.sh")]
LIB = JETSON / "lib.sh"  # sourced by the three scripts, not run on its own
LIB_FUNCTIONS = words("step say warn die quote run write_file file_sha256")

# The keys pollex's config loader accepts; anything else is rejected there.
CONFIG_KEYS = {field.name for field in dataclasses.fields(Config)}


def test_the_three_scripts_and_their_lib_are_there() -> None:
    assert sorted(JETSON.glob("*.sh")) == sorted([*SCRIPTS, LIB])


@pytest.mark.parametrize("script", [*SCRIPTS, LIB], ids=lambda p: p.name)
def test_shellcheck_clean(script: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck not found: install it with `apt-get install -y shellcheck`")
    result = subprocess.run(
        [shellcheck, "--severity=style", "--external-sources", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_strict_mode_and_executable(script: Path) -> None:
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(script, os.X_OK), f"chmod +x {script}"


def test_lib_is_only_sourced() -> None:
    text = LIB.read_text()
    assert text.startswith("# shellcheck shell=bash\n")
    assert not re.search(r"^set ", text, re.M)  # the scripts choose their own options
    assert not os.access(LIB, os.X_OK), f"chmod -x {LIB}"
    defined = re.findall(r"^([a-z_0-9]+)\(\)", text, re.M)
    assert sorted(defined) == sorted(LIB_FUNCTIONS)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_source_the_lib_and_do_not_redefine_it(script: Path) -> None:
    text = script.read_text()
    source = '# shellcheck source-path=SCRIPTDIR source=lib.sh\nsource "$SCRIPT_DIR/lib.sh"'
    assert source in text
    # Sourced before any function is defined, so every helper can use it.
    assert text.index(source) < text.index("() {")
    for name in LIB_FUNCTIONS:
        assert not re.search(rf"^{name}\(\)", text, re.M), f"{script.name} redefines {name}"


def test_config_uses_only_known_keys_with_the_right_types() -> None:
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((JETSON / "config.yaml").read_text())
    assert set(config) <= CONFIG_KEYS, set(config) - CONFIG_KEYS
    for key, value in config.items():
        if key == "port" or re.search(r"_(bytes|chars|tokens)$|^rate_limit", key):
            assert type(value) is int, key
        elif key.endswith("_s"):
            assert type(value) in (int, float), key
    assert config["llamacpp_url"] == "http://127.0.0.1:8080"
    assert config["llamacpp_model"] == "qwen2.5:1.5b-gpu"
    assert config["ollama_url"] == "http://127.0.0.1:11434"
    assert config["ollama_model"] == "qwen2.5:1.5b"
    assert config["fallback"] == ["llamacpp", "ollama"]
    assert (config["host"], config["port"], config["log_format"]) == ("127.0.0.1", 8090, "json")
    assert not {"api_key", "claude_api_key"} & set(config)  # secrets live in secrets.env
