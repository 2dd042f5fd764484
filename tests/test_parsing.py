"""The upstream stream parsers: `SSEDecoder` (WHATWG HTML §9.2.6) and `NDJSONDecoder`.

Example-based tables cover each rule of upstreams.md §5.1/§5.2; the hypothesis tests check
that cutting a stream into network chunks at arbitrary byte offsets never changes what
comes out. Each of the four property tests runs 200 examples (`max_examples=200`, no
deadline, no example database): 800 in all, about 2 s. Cut points are drawn both uniformly
and from the risky places (right after a CR, inside a multi-byte character or the BOM).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import Any

import pytest
from captures import load
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pollex.parsing import (
    LineTooLong,
    MalformedLine,
    NDJSONDecoder,
    SSEDecoder,
    SSEEvent,
)

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
CAPTURE = load("chat-stream.http").body


def sse(chunks: Sequence[bytes], **kwargs: Any) -> list[SSEEvent]:
    decoder = SSEDecoder(**kwargs)
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    return events + decoder.close()


def ndjson(chunks: Sequence[bytes], **kwargs: Any) -> list[Any]:
    decoder = NDJSONDecoder(**kwargs)
    objects: list[Any] = []
    for chunk in chunks:
        objects += decoder.feed(chunk)
    return objects + decoder.close()


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def cut_points(stream: bytes, max_size: int = 30) -> st.SearchStrategy[list[int]]:
    """Offsets to cut `stream` at: anywhere, or where a careless decoder goes wrong."""
    risky = [i + 1 for i, byte in enumerate(stream) if byte == 0x0D or byte >= 0x80]
    anywhere = st.integers(0, len(stream))
    points = st.one_of(anywhere, st.sampled_from(risky)) if risky else anywhere
    return st.lists(points, max_size=max_size)


def message(data: str, event: str = "message", id: str = "") -> SSEEvent:
    return SSEEvent(event, data, id)


# --- SSE: line endings --------------------------------------------------------------------


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(b"data: a\n\ndata: b\n\n", id="LF"),
        pytest.param(b"data: a\r\n\r\ndata: b\r\n\r\n", id="CRLF"),
        pytest.param(b"data: a\r\rdata: b\r\r", id="CR"),
        pytest.param(b"data: a\r\n\rdata: b\n\r\n", id="mixed"),
        pytest.param(b"data: a\r\r\ndata: b\n\r", id="mixed-CR-last"),
    ],
)
@pytest.mark.parametrize("feed", [pytest.param(lambda b: [b], id="whole"), bytewise])
def test_sse_line_endings(stream: bytes, feed: Any) -> None:
    assert sse(feed(stream)) == [message("a"), message("b")]


def test_sse_cr_at_chunk_end_is_held_until_the_next_byte() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    # If the CR had been taken as a line end on its own, this LF would be a blank line
    # and dispatch "a" now; held back, CR+LF is one line end and nothing is dispatched.
    assert decoder.feed(b"\ndata: b\r") == []
    assert decoder.feed(b"\n\r") == []
    assert decoder.feed(b"\n") == [message("a\nb")]


def test_sse_cr_held_at_close_still_ends_its_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.close() == []  # the line ended, but no blank line: not dispatched
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\r") == []
    assert decoder.close() == [message("a")]  # the held CR ended the blank line


# --- SSE: decoding ---------------------------------------------------------------------------


def test_sse_bom_is_stripped_once() -> None:
    bom = "\ufeff".encode()
    assert sse([bom + b"data: a\n\n"]) == [message("a")]
    # A second BOM is not a BOM any more: the line is a field named "\ufeffdata".
    assert sse([bom + bom + b"data: a\n\n"]) == []
    # Only at the very start of the stream.
    assert sse([b"data: a\n\n" + bom + b"data: b\n\n"]) == [message("a")]
    # A BOM split across chunks is still recognised.
    assert sse(bytewise(bom + b"data: a\n\n")) == [message("a")]


def test_sse_bom_in_data_is_kept() -> None:
    assert sse([b"data: \xef\xbb\xbfa\n\n"]) == [message("\ufeffa")]


@pytest.mark.parametrize("text", ["é", "€", "日本語", "𝄞 music", "naïve café ✓"])
def test_sse_utf8_split_across_chunks(text: str) -> None:
    stream = f"data: {text}\n\n".encode()
    assert sse(bytewise(stream)) == [message(text)]


def test_sse_invalid_utf8_is_replaced_not_fatal() -> None:
    assert sse([b"data: a\xffb\n\n"]) == [message("a\ufffdb")]


# --- SSE: fields -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        pytest.param(b": ping\n\ndata: a\n\n", [message("a")], id="comment-event"),
        pytest.param(b":\n\ndata: a\n:keep-alive\ndata: b\n\n", [message("a\nb")], id="comments"),
        pytest.param(b"data: a\ndata: b\ndata: c\n\n", [message("a\nb\nc")], id="multi-line"),
        pytest.param(b"data:\n\n", [message("")], id="empty-data-dispatched"),
        pytest.param(b"data\n\n", [message("")], id="no-colon-data"),
        pytest.param(b"data\ndata: x\n\n", [message("\nx")], id="no-colon-then-data"),
        pytest.param(b"data:a\n\n", [message("a")], id="no-space"),
        pytest.param(b"data:  a\n\n", [message(" a")], id="one-space-removed"),
        pytest.param(b"data: a: b\n\n", [message("a: b")], id="colon-in-value"),
        pytest.param(b"data: \n\n", [message("")], id="only-space"),
        pytest.param(b"event: ping\n\n", [], id="no-data-no-event"),
        pytest.param(b"event: x\n\ndata: a\n\n", [message("a")], id="event-type-reset"),
        pytest.param(b"event: delta\ndata: a\n\n", [message("a", "delta")], id="event"),
        pytest.param(b"event:\ndata: a\n\n", [message("a")], id="empty-event-is-message"),
        pytest.param(
            b"id: 7\ndata: a\n\ndata: b\n\n", [message("a", id="7"), message("b", id="7")]
        ),
        pytest.param(b"id: 7\ndata: a\n\nid\ndata: b\n\n", [message("a", id="7"), message("b")]),
        pytest.param(b"id: 7\n\nid: 8\x009\ndata: a\n\n", [message("a", id="7")], id="id-NUL"),
        pytest.param(b"retry: 10\nfoo: bar\nDATA: x\ndata: a\n\n", [message("a")], id="ignored"),
        pytest.param(b" data: a\n\n", [], id="leading-space-field"),
        pytest.param(b"\n\n\ndata: a\n\n\n\n", [message("a")], id="extra-blank-lines"),
        pytest.param(b"data: a\ndata: b", [], id="unterminated-dropped"),
        pytest.param(b"data: a\n\ndata: b\n", [message("a")], id="no-trailing-blank-line"),
    ],
)
def test_sse_fields(stream: bytes, expected: list[SSEEvent]) -> None:
    assert sse([stream]) == expected
    assert sse(bytewise(stream)) == expected


@pytest.mark.parametrize(
    ("error_field", "expected"),
    [
        (False, [message("[DONE]")]),
        (True, [SSEEvent("error", '{"code":500,"message":"oom"}', ""), message("[DONE]")]),
    ],
)
def test_sse_error_field_only_when_asked(error_field: bool, expected: list[SSEEvent]) -> None:
    stream = b'error: {"code":500,"message":"oom"}\n\ndata: [DONE]\n\n'
    assert sse([stream], error_field=error_field) == expected


def test_sse_events_come_out_as_soon_as_their_blank_line_arrives() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"\ndata: b") == [message("a")]
    assert decoder.feed(b"\n\n") == [message("b")]
    assert decoder.close() == []


def test_sse_line_too_long() -> None:
    decoder = SSEDecoder(max_line_bytes=64)
    decoder.feed(b"data: " + b"x" * 50)
    with pytest.raises(LineTooLong):
        decoder.feed(b"x" * 20)


def test_sse_line_at_the_limit_is_fine() -> None:
    line = b"data: " + b"x" * 58  # 64 bytes
    assert sse(bytewise(line + b"\n\n"), max_line_bytes=64) == [message("x" * 58)]


def test_sse_long_stream_of_short_lines_is_fine() -> None:
    stream = b"data: 0123456789\n\n" * 1000
    assert len(sse([stream], max_line_bytes=32)) == 1000


def test_sse_real_capture() -> None:
    events = sse([CAPTURE])
    assert [e.event for e in events] == ["message"] * 8
    assert events[-1].data == "[DONE]"
    texts = [json.loads(e.data)["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert texts == [None, "i", " goes", " to", " store", " yesterday", None]


# --- NDJSON ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        pytest.param(b'{"a":1}\n{"b":2}\n', [{"a": 1}, {"b": 2}], id="LF"),
        pytest.param(b'{"a":1}\r\n{"b":2}\r\n', [{"a": 1}, {"b": 2}], id="CRLF"),
        pytest.param(b'\n{"a":1}\n\n \n\r\n{"b":2}\n\n', [{"a": 1}, {"b": 2}], id="blank-lines"),
        pytest.param(b'{"a":1}\n{"done":true}', [{"a": 1}, {"done": True}], id="trailing-fragment"),
        pytest.param(b'{"t":"\xc3\xa9\xe2\x82\xac"}\n', [{"t": "é€"}], id="utf8"),
        pytest.param(b"", [], id="empty"),
    ],
)
def test_ndjson(stream: bytes, expected: list[Any]) -> None:
    assert ndjson([stream]) == expected
    assert ndjson(bytewise(stream)) == expected


def test_ndjson_objects_come_out_per_line() -> None:
    decoder = NDJSONDecoder()
    assert decoder.feed(b'{"a":') == []
    assert decoder.feed(b'1}\n{"b"') == [{"a": 1}]
    assert decoder.feed(b":2}\n") == [{"b": 2}]
    assert decoder.close() == []


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(b'{"a":1}\nnot json\n', id="garbage"),
        pytest.param(b"<html>502 Bad Gateway</html>\n", id="html"),
        pytest.param(b'{"a":1', id="truncated-at-close"),
        pytest.param(b'{"a":"\xff"}\n', id="bad-utf8"),
    ],
)
def test_ndjson_malformed_line(stream: bytes) -> None:
    with pytest.raises(MalformedLine):
        ndjson([stream])


def test_ndjson_line_too_long() -> None:
    decoder = NDJSONDecoder(max_line_bytes=16)
    decoder.feed(b'{"a":"')
    with pytest.raises(LineTooLong):
        decoder.feed(b"x" * 20)


# --- properties ------------------------------------------------------------------------------

_LINE_TEXT = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), max_size=12
)
_ENDINGS = st.sampled_from(["\n", "\r\n", "\r"])


@st.composite
def sse_streams(draw: st.DrawFn) -> tuple[bytes, list[SSEEvent]]:
    """The capture (optionally behind a BOM) plus generated events, and the events expected."""
    lines: list[str] = []
    expected = sse([CAPTURE])
    last_id = ""
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            lines.append(":" + draw(_LINE_TEXT))
        event = draw(st.one_of(st.none(), st.sampled_from(["delta", "error", "ping"])))
        if event is not None:
            lines.append(f"event: {event}")
        if draw(st.booleans()):
            last_id = draw(_LINE_TEXT.filter(lambda s: "\0" not in s))
            lines.append(f"id:{last_id}" if last_id[:1] != " " else f"id: {last_id}")
        data = draw(st.lists(_LINE_TEXT, min_size=1, max_size=3))
        lines += [f"data: {value}" for value in data]
        lines.append("")
        expected.append(SSEEvent(event or "message", "\n".join(data), last_id))
    text = ""
    previous = ""
    for line in lines:
        ending = draw(_ENDINGS)
        if previous == "\r" and line == "" and ending == "\n":
            ending = "\r\n"  # CR then LF would fuse into one CRLF and lose the blank line
        text += line + ending
        previous = ending
    bom = b"\xef\xbb\xbf" if draw(st.booleans()) else b""
    return bom + CAPTURE + text.encode(), expected


@PROPERTY
@given(sse_streams(), st.data())
def test_sse_split_anywhere_gives_the_same_events(
    case: tuple[bytes, list[SSEEvent]], data: st.DataObject
) -> None:
    stream, expected = case
    cuts = data.draw(cut_points(stream))
    assert sse([stream]) == expected
    assert sse(split_at(stream, cuts)) == expected


@PROPERTY
@given(
    st.binary(max_size=200)
    | st.lists(
        st.sampled_from([b"data:", b" x", b"\r", b"\n", b":", b"\xc3\xa9", b"\xef\xbb\xbf"])
    ).map(b"".join),
    st.data(),
)
def test_sse_split_anywhere_even_for_junk(stream: bytes, data: st.DataObject) -> None:
    cuts = data.draw(cut_points(stream, 20))
    assert sse(split_at(stream, cuts)) == sse([stream])


@PROPERTY
@given(st.data())
def test_sse_capture_split_anywhere(data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(CAPTURE)), min_size=1, max_size=60))
    assert sse(split_at(CAPTURE, cuts)) == sse([CAPTURE])


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)


@PROPERTY
@given(
    st.lists(
        st.tuples(_JSON, st.sampled_from(["\n", "\r\n"]), st.integers(0, 2), st.booleans()),
        max_size=8,
    ),
    st.booleans(),
    st.data(),
)
def test_ndjson_split_anywhere_gives_the_same_objects(
    items: list[tuple[Any, str, int, bool]], final_newline: bool, data: st.DataObject
) -> None:
    text = ""
    for obj, ending, blanks, ascii_only in items:
        text += ending * blanks + json.dumps(obj, ensure_ascii=ascii_only) + ending
    if items and not final_newline:
        text = text.rstrip("\r\n")  # the last document arrives without its newline
    stream = text.encode()
    cuts = data.draw(cut_points(stream))
    expected = [obj for obj, *_ in items]
    assert ndjson([stream]) == expected
    assert ndjson(split_at(stream, cuts)) == expected


def test_a_whole_line_over_the_limit_is_refused_too() -> None:
    """Not only a line still coming: one that arrives whole in a single read as well."""
    decoder = SSEDecoder(max_line_bytes=50)
    assert decoder.feed(b"data: short\n\n") == [SSEEvent("message", "short", "")]
    with pytest.raises(LineTooLong):
        decoder.feed(b"data: " + b"x" * 60 + b"\n\n")


def test_a_bom_split_across_reads_is_still_dropped() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"\xef\xbb") == []
    assert decoder.feed(b"\xbfdata: x\n\n") == [SSEEvent("message", "x", "")]
