"""Cutting a text too long for a backend's context into pieces that each fit.

Cuts go at blank lines first, then at sentence ends, then at spaces; never inside a word
(a single word longer than the limit is a piece of its own). Nothing between the pieces is
lost or changed: each piece comes with the whitespace that stood before it, so joining them
gives the text back byte for byte (less the whitespace around it), and the answer keeps the
text's own separators between its pieces.
"""

from __future__ import annotations

import re

# Coarsest first. The separator of each level is the pattern's group: the whitespace
# between two units (after a sentence's closing quotes or brackets, which stay with it).
_LEVELS = (
    re.compile(r"([ \t]*\n(?:[ \t]*\n)+[ \t]*)"),  # blank lines between paragraphs
    re.compile("[.!?\u2026][\"'\u201d\u2019)\\]]*(\\s+)"),  # a sentence's end
    re.compile(r"(\s+)"),  # between words
)

Piece = tuple[str, str]  # (the whitespace before it, the piece)


def split(text: str, limit: int) -> list[Piece]:
    """Pieces of at most `limit` characters (but for single words), in order, such that
    `"".join(before + piece for before, piece in split(text, n)) == text.strip()`."""
    body = text.strip()
    return _pack(body, limit, 0) if body else []


def _pack(text: str, limit: int, level: int) -> list[Piece]:
    """`text` (no whitespace at its ends) as pieces: units of this level packed greedily,
    a unit too long for one piece cut at the next level."""
    if len(text) <= limit or level == len(_LEVELS):
        return [("", text)]
    units = _units(text, _LEVELS[level])
    pieces: list[Piece] = []
    current = ""
    current_before = ""
    for before, unit in units:
        if current and len(current) + len(before) + len(unit) <= limit:
            current += before + unit
            continue
        if current:
            pieces.append((current_before, current))
        if len(unit) > limit:
            inner = _pack(unit, limit, level + 1)
            inner[0] = (before + inner[0][0], inner[0][1])
            *done, (current_before, current) = inner
            pieces.extend(done)
        else:
            current_before, current = before, unit
    pieces.append((current_before, current))
    return pieces


def _units(text: str, separator: re.Pattern[str]) -> list[Piece]:
    units: list[Piece] = []
    before = ""
    start = 0
    for match in separator.finditer(text):
        units.append((before, text[start : match.start(1)]))
        before = match.group(1)
        start = match.end(1)
    units.append((before, text[start:]))
    return units
