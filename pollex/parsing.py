"""Incremental parsers for upstream streams: SSE (WHATWG HTML §9.2.6) and NDJSON.

Both are fed raw network chunks, which split events, lines and even UTF-8 characters at
arbitrary points, and both bound how much they hold: a line longer than `max_line_bytes`
raises `LineTooLong` instead of growing a buffer without limit. Written by hand because
the rules are short and central (b5050's `error:` field needs special handling that no
SSE client library offers) and every chunk of every answer passes through here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"
_COLON = ord(":")


def encodable(text: str) -> str:
    """`text` with any lone surrogate (a JSON `\\udc80` escape decodes to one) replaced by
    U+FFFD, so that it can be written as UTF-8."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


class LineTooLong(ValueError):
    pass


class MalformedLine(ValueError):
    pass


class _Deferred:
    """A failure found after some good items of the same chunk is raised on the next call,
    so the items before it still reach the client."""

    _failure: ValueError | None = None

    def _fail(self, failure: ValueError, items: list[Any]) -> None:
        if not items:
            raise failure
        self._failure = failure

    def _raise_pending(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str
    data: str
    id: str


class SSEDecoder(_Deferred):
    """Turns SSE bytes into events.

    Works on bytes and decodes only whole lines (a line end is ASCII, so a whole line never
    splits a UTF-8 character): no incremental decoder, and the common chunk — LF line ends,
    one `data:` line — takes one `split`. With `error_field=True` a line `error: {...}`
    (llama-server b5050's non-standard way of reporting a mid-stream failure) becomes an
    event named `error` instead of being ignored.
    """

    def __init__(self, max_line_bytes: int = 1 << 20, *, error_field: bool = False) -> None:
        self._pending = b""
        self._at_start = True  # one leading BOM is dropped
        self._data: list[bytes] = []
        self._event = ""
        self._last_id = ""
        self._max_line = max_line_bytes
        self._error_field = error_field

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        self._raise_pending()
        buffer = self._pending + chunk if self._pending else chunk
        if self._at_start:
            if len(buffer) < len(_BOM) and _BOM.startswith(buffer):
                self._pending = buffer
                return []
            if buffer.startswith(_BOM):
                buffer = buffer[len(_BOM) :]
            self._at_start = False
        if b"\r" in buffer:
            lines = _LINE_END.split(buffer)
            tail = lines.pop()
            if not tail and buffer.endswith(b"\r"):
                # A CR at the end of a chunk may be the first half of a CRLF: keep it back.
                tail = lines.pop() + b"\r"
        else:
            lines = buffer.split(b"\n")
            tail = lines.pop()
        events: list[SSEEvent] = []
        for line in lines:
            if len(line) > self._max_line:
                return self._too_long(events)
            event = self._line(line)
            if event is not None:
                events.append(event)
        if len(tail) > self._max_line:
            return self._too_long(events)
        self._pending = tail
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: a held CR ends its line; an event without its blank line is dropped."""
        self._raise_pending()
        events: list[SSEEvent] = []
        if self._pending.endswith(b"\r"):
            event = self._line(self._pending[:-1])
            if event is not None:
                events.append(event)
        self._pending = b""
        return events

    def _too_long(self, events: list[SSEEvent]) -> list[SSEEvent]:
        self._pending = b""
        self._fail(LineTooLong(f"upstream line longer than {self._max_line} bytes"), events)
        return events

    def _line(self, line: bytes) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line[0] == _COLON:
            return None
        field, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            self._data.append(value)
        elif field == b"event":
            self._event = value.decode("utf-8", "replace")
        elif field == b"id":
            if b"\0" not in value:
                self._last_id = value.decode("utf-8", "replace")
        elif field == b"error" and self._error_field:
            self._event = "error"
            self._data.append(value)
        return None

    def _dispatch(self) -> SSEEvent | None:
        if not self._data:
            self._event = ""
            return None
        data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
        event = SSEEvent(self._event or "message", data.decode("utf-8", "replace"), self._last_id)
        self._data = []
        self._event = ""
        return event


class NDJSONDecoder(_Deferred):
    """Turns newline-delimited JSON bytes into objects (Ollama's stream format)."""

    def __init__(self, max_line_bytes: int = 1 << 20) -> None:
        self._buffer = b""
        self._max_line = max_line_bytes

    def feed(self, chunk: bytes) -> list[Any]:
        self._raise_pending()
        lines = (self._buffer + chunk).split(b"\n")
        self._buffer = lines.pop()
        objects: list[Any] = []
        for line in lines:
            if line.strip():
                try:
                    objects.append(_json_line(line))
                except MalformedLine as failure:
                    self._fail(failure, objects)
                    return objects
        if len(self._buffer) > self._max_line:
            self._buffer = b""
            self._fail(LineTooLong(f"upstream line longer than {self._max_line} bytes"), objects)
        return objects

    def close(self) -> list[Any]:
        """End of stream: a last line without its newline must still be a whole document."""
        self._raise_pending()
        rest, self._buffer = self._buffer, b""
        return [_json_line(rest)] if rest.strip() else []


def _json_line(line: bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        raise MalformedLine(f"not JSON: {line[:80]!r}") from None
