"""The `pollex` command: in-process through `main()`, and as a real process where the
behaviour only exists in one (exit codes of `python -m`, signals, systemd notify)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helpers import free_port, notify_socket

from pollex import __version__
from pollex.cli import main

START_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0
# What an unclean shutdown leaves in the output.
UNCLEAN = ("Unclosed client session", "Unclosed connector", "Task was destroyed", "Traceback")
# The process environment a test must not inherit: settings and systemd's variables.
INHERITED = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No POLLEX_* settings from whoever runs the tests."""
    for name in list(os.environ):
        if name.startswith("POLLEX_") or name in INHERITED:
            monkeypatch.delenv(name)


def child_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("POLLEX_") and k not in INHERITED
    }
    return {**env, **extra}


def run_pollex(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pollex", *args],
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=STOP_TIMEOUT_S * 2,
        check=False,
    )


# --- in-process ------------------------------------------------------------------------


@pytest.mark.usefixtures("clean_env")
def test_serve_without_backend_exits_2_and_says_what_to_set(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    for word in ("llamacpp_url", "ollama_url", "claude_api_key", "--mock"):
        assert word in err


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("empty", ["''", "[]"])
def test_serve_without_backend_in_file_exits_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    empty: str,
) -> None:
    path = tmp_path / "pollex.yaml"
    path.write_text(f"port: 9000\nllamacpp_url: {empty}\n")

    def must_not_serve(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pollex started serving with no backend configured")

    # Were it to serve, main() would run until a signal: fail at once instead of hanging.
    monkeypatch.setattr("pollex.log.configure_logging", lambda *args: None)
    monkeypatch.setattr("pollex.server.serve", must_not_serve)
    assert main(["serve", "--config", str(path)]) == 2
    assert "--mock" in capsys.readouterr().err


@pytest.mark.usefixtures("clean_env")
def test_config_prints_yaml_with_secrets_redacted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pollex.yaml"
    path.write_text(
        "port: 9001\n"
        "llamacpp_url: http://127.0.0.1:8080\n"
        "api_key: topsecret-api-key-123\n"
        "claude_api_key: sk-ant-very-secret-456\n"
        "fallback: [llamacpp, claude]\n"
    )
    assert main(["config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "topsecret-api-key-123" not in out
    assert "sk-ant-very-secret-456" not in out
    data = yaml.safe_load(out)
    assert data["api_key"] == "<redacted>"
    assert data["claude_api_key"] == "<redacted>"
    assert data["port"] == 9001
    assert data["llamacpp_url"] == ["http://127.0.0.1:8080"]  # a list, even of one
    assert data["fallback"] == ["llamacpp", "claude"]


@pytest.mark.usefixtures("clean_env")
def test_config_redacts_a_key_read_from_api_key_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("key-from-file-789\n")
    monkeypatch.setenv("POLLEX_API_KEY_FILE", str(key_file))
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "key-from-file-789" not in out
    assert yaml.safe_load(out)["api_key"] == "<redacted>"


@pytest.mark.usefixtures("clean_env")
def test_config_precedence_file_env_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "pollex.yaml"
    path.write_text("port: 9001\nhost: 10.0.0.1\nollama_url: http://file\n")
    monkeypatch.setenv("POLLEX_PORT", "9002")
    monkeypatch.setenv("POLLEX_OLLAMA_URL", "http://env")
    assert main(["config", "--config", str(path), "--port", "9003", "--mock"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert data["port"] == 9003
    assert data["host"] == "10.0.0.1"
    assert data["ollama_url"] == ["http://env"]
    assert data["mock"] is True


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("command", ["serve", "config"])
def test_bad_config_file_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    path = tmp_path / "pollex.yaml"
    path.write_text("llamacpp_url: http://127.0.0.1:8080\nprobe_intervall_s: 1\n")
    assert main([command, "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert "probe_intervall_s" in captured.err
    assert str(path) in captured.err
    assert captured.out == ""


@pytest.mark.usefixtures("clean_env")
def test_bad_env_value_exits_2_naming_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLLEX_IDLE_TIMEOUT_S", "a minute")
    assert main(["serve", "--mock"]) == 2
    assert "POLLEX_IDLE_TIMEOUT_S" in capsys.readouterr().err


@pytest.mark.usefixtures("clean_env")
def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_version_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"pollex {__version__}"


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["serve", "--port", "eighty"]])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


# --- as a process ----------------------------------------------------------------------


def test_python_m_pollex_version() -> None:
    result = run_pollex("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"pollex {__version__}"


def test_python_m_pollex_serve_without_backend_exits_2() -> None:
    result = run_pollex("serve")
    assert result.returncode == 2
    for word in ("llamacpp_url", "ollama_url", "claude_api_key", "--mock"):
        assert word in result.stderr
    assert "Traceback" not in result.stderr


def test_python_m_pollex_bad_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "pollex.yaml"
    path.write_text("port: high\n")
    result = run_pollex("serve", "--mock", "--config", str(path))
    assert result.returncode == 2
    assert "port" in result.stderr
    assert str(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_exits_1_with_a_message() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_pollex("serve", "--mock", "--port", str(port))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def events(self) -> list[str]:
        events = []
        for line in self.output().splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line)["event"])
        return events

    def stop(self, sig: signal.Signals) -> int:
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"pollex did not exit within {STOP_TIMEOUT_S} s of {sig.name}")


@contextlib.contextmanager
def pollex_process(tmp_path: Path, **env: str) -> Iterator[Server]:
    """`python -m pollex serve --mock` on a free port, ready when health answers."""
    port = free_port()
    log = tmp_path / "pollex.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "pollex", "serve", "--mock", "--port", str(port)],
            env=child_env(**env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, port, log)
    try:
        wait_until_healthy(server)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)


def wait_until_healthy(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    with httpx.Client(trust_env=False, timeout=0.5) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                pytest.fail(f"pollex exited with {server.process.returncode}:\n{server.output()}")
            with contextlib.suppress(httpx.TransportError):
                if client.get(f"{server.url}/api/health").status_code == 200:
                    return
            time.sleep(0.05)
    pytest.fail(f"pollex did not answer /api/health within {START_TIMEOUT_S} s")


def polish(server: Server, client: httpx.Client) -> Any:
    response = client.post(f"{server.url}/api/polish", json={"text": "i goes to the store"})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_stops_cleanly_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    with pollex_process(tmp_path) as server:
        with httpx.Client(trust_env=False, timeout=5) as client:
            body = polish(server, client)
            assert body["polished"] == "I goes to the store."
            assert body["provider"] == "mock"
            # The client keeps its idle keep-alive connection open through the signal.
            assert server.stop(sig) == 0
        output = server.output()
    for marker in UNCLEAN:
        assert marker not in output, output
    events = server.events()
    assert events.index("listening") < events.index("stopping") < events.index("stopped")


def test_serve_talks_to_systemd(tmp_path: Path) -> None:
    with notify_socket(tmp_path, 0.2) as (sock, path):
        with pollex_process(tmp_path, NOTIFY_SOCKET=path, WATCHDOG_USEC="200000") as server:
            messages: list[str] = []

            def receive_until(wanted: str) -> None:
                deadline = time.monotonic() + START_TIMEOUT_S
                while wanted not in messages and time.monotonic() < deadline:
                    with contextlib.suppress(TimeoutError):
                        messages.append(sock.recv(4096).decode())

            receive_until("WATCHDOG=1")  # pinged every 0.1 s
            assert messages[0] == "READY=1"
            assert "WATCHDOG=1" in messages
            assert server.stop(signal.SIGTERM) == 0
            receive_until("STOPPING=1")
        output = server.output()
    assert "STOPPING=1" in messages
    assert messages.index("READY=1") < messages.index("STOPPING=1")
    for marker in UNCLEAN:
        assert marker not in output, output
