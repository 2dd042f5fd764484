"""systemd notify protocol: datagrams to $NOTIFY_SOCKET, watchdog interval from the env."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import notify_socket

from pollex.notify import notify, watchdog_interval


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    with notify_socket(tmp_path, 1.0) as bound:
        yield bound


@pytest.mark.parametrize("env", [{}, {"NOTIFY_SOCKET": ""}])
def test_no_socket_returns_false(env: dict[str, str]) -> None:
    assert notify("READY=1", env=env) is False


def test_no_socket_in_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False


def test_sends_one_datagram_per_message(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    env = {"NOTIFY_SOCKET": path}
    assert notify("READY=1", env=env) is True
    assert notify("WATCHDOG=1", env=env) is True
    assert sock.recv(4096) == b"READY=1"
    assert sock.recv(4096) == b"WATCHDOG=1"


def test_reads_notify_socket_from_process_environment(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert notify("STOPPING=1") is True
    assert sock.recv(4096) == b"STOPPING=1"


def test_abstract_namespace_address() -> None:
    name = f"pollex-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(1.0)
        assert notify("READY=1", env={"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(4096) == b"READY=1"


def test_nobody_listening_returns_false(tmp_path: Path) -> None:
    assert notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}) is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "200000"}, 0.1),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}, 0.1),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": ""}, 0.1),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}, None),
        ({}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "-200000"}, None),
        ({"WATCHDOG_USEC": "2.5"}, None),
        ({"WATCHDOG_USEC": "0"}, None),  # 0 is no watchdog, not "ping without pause"
        ({"WATCHDOG_USEC": "²"}, None),  # str.isdigit() says yes, int() says no
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env) == expected


def test_watchdog_interval_from_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() == 0.5
    monkeypatch.delenv("WATCHDOG_USEC")
    assert watchdog_interval() is None
