"""What the clients show: `pollex polish`'s text on stdout, shaped like the input, and the
status line on stderr that `pollex polish` and `pollex bench` keep for a person at a
terminal."""

from __future__ import annotations

import time
from typing import IO

PROGRESS_EVERY_S = 0.1


def _newlines(whitespace: str) -> str:
    return ("\r\n" if "\r\n" in whitespace else "\n") * whitespace.count("\n")


class TextOutput:
    """Writes the answer as it streams, shaped like the input (see the module docstring).

    Whitespace at the end of what arrived so far is held back until more text follows,
    because it may be the answer's trailing whitespace, which the input's replaces.
    """

    def __init__(self, source: str, out: IO[bytes]) -> None:
        self._out = out
        self._head = _newlines(source[: len(source) - len(source.lstrip())])
        self._tail = _newlines(source[len(source.rstrip()) :])
        self._started = False
        self._held = ""

    def write(self, chunk: str) -> None:
        if not self._started:
            chunk = chunk.lstrip()
            if not chunk:
                return
            self._started = True
            chunk = self._head + chunk
        text = self._held + chunk
        body = text.rstrip()
        self._held = text[len(body) :]
        if body:
            self._out.write(body.encode("utf-8"))
            self._out.flush()

    def finish(self) -> None:
        self._out.write(self._tail.encode("utf-8"))
        self._out.flush()


class StatusLine:
    """One line on stderr, rewritten in place, shown only when `enabled` (a terminal)."""

    def __init__(self, err: IO[str], *, enabled: bool) -> None:
        self._err = err
        self._enabled = enabled
        self._shown = False

    def clear(self) -> None:
        if self._shown:
            self._err.write("\r\x1b[K")
            self._err.flush()
            self._shown = False

    def _show(self, line: str) -> None:
        if self._enabled:
            self._err.write(f"\r\x1b[K{line}")
            self._err.flush()
            self._shown = True


class Progress(StatusLine):
    """A one-line status on stderr while waiting, for a human at a terminal only.

    When stdout is that terminal too, the line is cleared before the first text so the
    two never mix; otherwise (output piped or `--json`) it counts characters.
    """

    def __init__(self, err: IO[str], *, enabled: bool, stdout_tty: bool) -> None:
        super().__init__(err, enabled=enabled)
        self._stdout_tty = stdout_tty
        self._model = ""
        self._chars = 0
        self._last = 0.0

    def waiting(self) -> None:
        self._show("pollex: waiting for a model…")

    def started(self, model: str, fallback_from: object) -> None:
        self._model = model if fallback_from is None else f"{model} (for {fallback_from})"
        self._show(f"pollex: {self._model} is writing…")

    def text(self, chars: int) -> None:
        if self._stdout_tty:
            self.clear()
            self._enabled = False
            return
        self._chars += chars
        now = time.monotonic()
        if now - self._last >= PROGRESS_EVERY_S:
            self._last = now
            self._show(f"pollex: {self._model}: {self._chars} characters")


class BenchProgress(StatusLine):
    """One status line on stderr, for a human at a terminal only; notes go there always."""

    def __init__(self, err: IO[str], *, enabled: bool) -> None:
        super().__init__(err, enabled=enabled)
        self.err = err
        self._label = ""
        self._chars = 0
        self._last = 0.0

    def step(self, label: str) -> None:
        self._label, self._chars = label, 0
        self._show(f"pollex: {label}")

    def text(self, chars: int) -> None:
        self._chars += chars
        now = time.monotonic()
        if now - self._last >= PROGRESS_EVERY_S:
            self._last = now
            self._show(f"pollex: {self._label} · {self._chars} chars")

    def waiting(self, seconds: float) -> None:
        self.note(
            f"pollex: rate limited, waiting {seconds:.0f} s (a valid API key is never limited)"
        )

    def note(self, line: str) -> None:
        self.clear()
        self.err.write(line + "\n")
        self.err.flush()
