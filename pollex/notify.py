"""systemd's notify protocol: one datagram per message to $NOTIFY_SOCKET.

Twelve lines of socket code instead of a libsystemd binding that the Nano's Python would
have to compile.
"""

from __future__ import annotations

import os
import socket


def notify(message: str, env: dict[str, str] | None = None) -> bool:
    """Send `message` (e.g. "READY=1") if pollex runs under systemd; False otherwise."""
    address = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        try:
            sock.sendto(message.encode(), address)
        except OSError:
            return False
    return True


def watchdog_interval(env: dict[str, str] | None = None) -> float | None:
    """Half of WATCHDOG_USEC in seconds, when systemd asks for watchdog pings."""
    source = os.environ if env is None else env
    usec = source.get("WATCHDOG_USEC", "")
    pid = source.get("WATCHDOG_PID", "")
    # Like sd_watchdog_enabled(): only a positive decimal number turns the watchdog on
    # (0 would make the ping loop spin; "²".isdigit() is True but int() rejects it).
    if not (usec.isascii() and usec.isdigit()) or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2 / 1_000_000
