"""What changed: the word-level edits that turn a submitted text into its polished version.

`edits(old, new)` returns, in order, `{"start", "end", "old", "new"}` objects: `[start,
end)` is a span of `old` in code points (Python's string indices), `old` is
`old[start:end]`, and `new` is what replaces it. Applying every edit to `old` gives `new`
exactly (`apply_edits`). `/api/polish` computes them between the `text` it was sent and
the `polished` it answers (the answer with its leading and trailing whitespace stripped),
so a leading or trailing blank of the input that the answer dropped is part of the first or
last edit.

Tokens are words (`\\w+`) and single other characters (punctuation); whitespace only
separates them. An edit is never whitespace alone: a whitespace difference between two
unchanged tokens is merged into the shorter of them (`"store ,"` to `"store,"` becomes
`" ,"` to `","`), so a reader sees which word or mark it belongs to; common whitespace at
the edges of a changed stretch is left out of it.

Cost. The tokens that stay are found by a patience diff (`_anchors`): after the common
head and tail, the tokens found once on each side anchor the match, and what lies between
anchors is matched the same way. It looks at each token a few times for prose, where
most words anchor, and never more than `WORK_BUDGET` tokens in all; past that, what is
left unmatched becomes one edit per stretch. `difflib.SequenceMatcher` on all the words
(autojunk off) costs far more at the limit: 0.85 s for 10,000 characters in which every
other word changed, against 30 ms here (bench/edits.py; README: `edits`).
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from collections.abc import Sequence
from difflib import SequenceMatcher
from typing import TypedDict

_TOKEN = re.compile(r"\w+|[^\w\s]")

# How many tokens the matching may look at in all (README: `edits`).
WORK_BUDGET = 200_000
# A stretch with no anchor is matched by SequenceMatcher up to this many token pairs.
SMALL_STRETCH = 2_500


class Edit(TypedDict):
    start: int
    end: int
    old: str
    new: str


# A run of `old` and the run of `new` that takes its place: (start, end, start, end).
_Piece = tuple[int, int, int, int]


def edits(old: str, new: str) -> list[Edit]:
    """The edits that turn `old` into `new`, in order, non-overlapping."""
    if old == new:
        return []
    if not (old.strip() or new.strip()):  # no token to hold a whitespace change
        return [{"start": 0, "end": len(old), "old": old, "new": new}]
    a = [m.span() for m in _TOKEN.finditer(old)]
    b = [m.span() for m in _TOKEN.finditer(new)]
    anchors = _anchors([old[s:e] for s, e in a], [new[s:e] for s, e in b])
    return _edits_between(old, new, [(*a[i], *b[j]) for i, j in anchors])


def apply_edits(text: str, changes: Sequence[Edit]) -> str:
    """`text` with every edit applied (the edits in order, as `edits` returns them)."""
    parts = []
    at = 0
    for edit in changes:
        parts.append(text[at : edit["start"]])
        parts.append(edit["new"])
        at = edit["end"]
    parts.append(text[at:])
    return "".join(parts)


def _anchors(a: list[str], b: list[str]) -> list[tuple[int, int]]:
    """Index pairs of the tokens that stay, in order (a patience diff, within a budget).

    A stretch that differs is first trimmed of its common head and tail; then the tokens
    that occur exactly once in each side of it anchor it (the longest run of them in the
    same order), and the stretches between those anchors are matched the same way. A
    stretch with no such token is matched by `SequenceMatcher` when it is small, and is
    one change otherwise. Every stretch looked at costs its length from `WORK_BUDGET`;
    when that is spent, the stretches left are one change each. So the cost is bounded
    whatever the texts, and for prose, where most words are anchors, it is near linear.
    """
    pairs: list[tuple[int, int]] = []
    budget = WORK_BUDGET
    todo = [(0, len(a), 0, len(b))]
    while todo:
        alo, ahi, blo, bhi = todo.pop()
        while alo < ahi and blo < bhi and a[alo] == b[blo]:
            pairs.append((alo, blo))
            alo, blo = alo + 1, blo + 1
        while alo < ahi and blo < bhi and a[ahi - 1] == b[bhi - 1]:
            ahi, bhi = ahi - 1, bhi - 1
            pairs.append((ahi, bhi))
        if alo == ahi or blo == bhi:
            continue
        budget -= (ahi - alo) + (bhi - blo)
        if budget < 0:
            continue
        chain = _longest_increasing(_unique_in_both(a, b, alo, ahi, blo, bhi))
        if not chain:
            chain = _longest_increasing(_same_count_in_both(a, b, alo, ahi, blo, bhi))
        if chain:
            pairs.extend(chain)
            for i, j in [*chain, (ahi, bhi)]:
                todo.append((alo, i, blo, j))
                alo, blo = i + 1, j + 1
        elif (ahi - alo) * (bhi - blo) <= SMALL_STRETCH:
            budget -= (ahi - alo) * (bhi - blo)
            matcher = SequenceMatcher(None, a[alo:ahi], b[blo:bhi], False)
            for i, j, size in matcher.get_matching_blocks():
                pairs.extend((alo + i + k, blo + j + k) for k in range(size))
    pairs.sort()
    return pairs


def _unique_in_both(
    a: list[str], b: list[str], alo: int, ahi: int, blo: int, bhi: int
) -> list[tuple[int, int]]:
    """(i, j) for each token that occurs once in `a[alo:ahi]` and once in `b[blo:bhi]`."""
    in_a = Counter(a[alo:ahi])
    in_b = Counter(b[blo:bhi])
    at_b = {b[j]: j for j in range(blo, bhi) if in_b[b[j]] == 1}
    return [(i, at_b[a[i]]) for i in range(alo, ahi) if a[i] in at_b and in_a[a[i]] == 1]


def _same_count_in_both(
    a: list[str], b: list[str], alo: int, ahi: int, blo: int, bhi: int
) -> list[tuple[int, int]]:
    """(i, j) pairing the n-th `a[i]` with the n-th `b[j]`, for each token that occurs as
    many times in `a[alo:ahi]` as in `b[blo:bhi]` (a text pasted twice has no unique word)."""
    in_a = Counter(a[alo:ahi])
    in_b = Counter(b[blo:bhi])
    at_b: dict[str, list[int]] = {}
    for j in range(blo, bhi):
        if in_a[b[j]] == in_b[b[j]]:
            at_b.setdefault(b[j], []).append(j)
    seen: Counter[str] = Counter()
    pairs = []
    for i in range(alo, ahi):
        positions = at_b.get(a[i])
        if positions is not None:
            pairs.append((i, positions[seen[a[i]]]))
            seen[a[i]] += 1
    return pairs


def _longest_increasing(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The longest run of `pairs` (in order of i) whose j increase too (patience sort)."""
    tops: list[int] = []  # tops[k]: the smallest j that ends a run of length k + 1
    ends: list[int] = []  # ends[k]: index in `pairs` of that run's last pair
    back: list[int] = []
    for index, (_, j) in enumerate(pairs):
        k = bisect.bisect_left(tops, j)
        if k == len(tops):
            tops.append(j)
            ends.append(index)
        else:
            tops[k] = j
            ends[k] = index
        back.append(ends[k - 1] if k else -1)
    run = []
    index = ends[-1] if ends else -1
    while index >= 0:
        run.append(pairs[index])
        index = back[index]
    run.reverse()
    return run


def _edits_between(old: str, new: str, anchors: list[_Piece]) -> list[Edit]:
    """The edits around `anchors`, runs that are equal in both texts, in order.

    Between two anchors lies a gap in each text. A gap that differs becomes an edit,
    less the whitespace both gaps start and end with, unless the gaps are whitespace
    only: then the shorter neighbouring anchor joins the edit (never a whitespace-only
    edit). Edits that touch or overlap are joined into one.
    """
    pieces: list[_Piece] = []
    prev_a = prev_b = 0
    for index, (sa, ea, sb, eb) in enumerate([*anchors, (len(old), len(old), len(new), len(new))]):
        gap_a, gap_b = old[prev_a:sa], new[prev_b:sb]
        if gap_a != gap_b:
            if gap_a.strip() or gap_b.strip():
                pieces.append(_trimmed(gap_a, gap_b, prev_a, prev_b))
            else:
                pieces.append(_with_neighbour(anchors, index, (prev_a, sa, prev_b, sb)))
        prev_a, prev_b = ea, eb
    return _joined(pieces, old, new)


def _trimmed(gap_a: str, gap_b: str, at_a: int, at_b: int) -> _Piece:
    """The gaps less the whitespace they both start and end with."""
    lead = 0
    limit = min(len(gap_a), len(gap_b))
    while lead < limit and gap_a[lead] == gap_b[lead] and gap_a[lead].isspace():
        lead += 1
    trail = 0
    limit -= lead
    while trail < limit and gap_a[-1 - trail] == gap_b[-1 - trail] and gap_a[-1 - trail].isspace():
        trail += 1
    return (at_a + lead, at_a + len(gap_a) - trail, at_b + lead, at_b + len(gap_b) - trail)


def _with_neighbour(anchors: list[_Piece], index: int, gap: _Piece) -> _Piece:
    """A whitespace-only gap with the shorter of the anchors around it."""
    before = anchors[index - 1] if index > 0 else None
    after = anchors[index] if index < len(anchors) else None
    if before is None or (after is not None and after[1] - after[0] < before[1] - before[0]):
        assert after is not None  # a text with no token at all never reaches here
        return (gap[0], after[1], gap[2], after[3])
    return (before[0], gap[1], before[2], gap[3])


def _joined(pieces: list[_Piece], old: str, new: str) -> list[Edit]:
    merged: list[list[int]] = []
    for sa, ea, sb, eb in pieces:
        if merged and sa <= merged[-1][1]:
            last = merged[-1]
            last[1], last[3] = max(last[1], ea), max(last[3], eb)
        else:
            merged.append([sa, ea, sb, eb])
    return [
        {"start": sa, "end": ea, "old": old[sa:ea], "new": new[sb:eb]} for sa, ea, sb, eb in merged
    ]
