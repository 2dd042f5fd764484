"""`pollex.edits`: the word-level changes between a text and its polished version."""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pollex.edits
from pollex.edits import Edit, apply_edits, edits

# Texts made of a few words, marks and kinds of whitespace, so that two drawn texts share
# words (and the matching has something to do) far more often than arbitrary text would.
WORDS = ("the", "a", "I", "i", "went", "goes", "store", "é", "naïve", "ß", "😀", "x_1")
PIECES = st.sampled_from([*WORDS, ",", ".", "!", "'", "-", " ", "  ", "\n", "\t", "\u00a0"])
texts = st.lists(PIECES, max_size=40).map("".join)
any_text = st.text(max_size=60)


def check(old: str, new: str) -> list[Edit]:
    """The properties every answer must have, for any two texts."""
    changes = edits(old, new)
    assert apply_edits(old, changes) == new
    at = 0
    for edit in changes:
        assert at <= edit["start"] <= edit["end"] <= len(old)
        assert edit["old"] == old[edit["start"] : edit["end"]]
        assert edit["old"] != edit["new"]
        if old.strip() or new.strip():
            assert (edit["old"] + edit["new"]).strip(), f"whitespace-only edit {edit}"
        at = edit["end"]
    # Ordered, and never touching: touching edits are one edit.
    assert all(x["end"] < y["start"] for x, y in itertools.pairwise(changes))
    return changes


@settings(max_examples=500, deadline=None)
@given(texts, texts)
def test_properties_on_related_texts(old: str, new: str) -> None:
    check(old, new)


@settings(max_examples=300, deadline=None)
@given(any_text, any_text)
def test_properties_on_any_text(old: str, new: str) -> None:
    check(old, new)


@settings(max_examples=300, deadline=None)
@given(texts, st.data())
def test_one_word_replaced_is_one_edit_within_it(old: str, data: st.DataObject) -> None:
    """What the polish did not touch is in no edit."""
    words = old.split(" ")
    index = data.draw(st.integers(0, len(words) - 1))
    start = sum(len(w) + 1 for w in words[:index])
    end = start + len(words[index])
    new = " ".join([*words[:index], "REPLACED", *words[index + 1 :]])

    (edit,) = check(old, new)

    assert start <= edit["start"] <= edit["end"] <= end
    assert edit["new"] == "REPLACED"


def test_a_polish() -> None:
    old = "i goes  to the store , and i buy milk"
    new = "I went to the store, and I bought milk."

    assert edits(old, new) == [
        {"start": 0, "end": 7, "old": "i goes ", "new": "I went"},  # one space of two
        {"start": 20, "end": 22, "old": " ,", "new": ","},
        {"start": 27, "end": 32, "old": "i buy", "new": "I bought"},
        {"start": 37, "end": 37, "old": "", "new": "."},
    ]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("same", "same", []),
        # The input's edges that the stripped answer dropped are in the first/last edit.
        ("  hello world\n", "Hello world.", [(0, 7, "  hello", "Hello"), (13, 14, "\n", ".")]),
        ("a  b", "a b", [(0, 3, "a  ", "a ")]),  # whitespace joins the shorter neighbour
        ("word  b", "word b", [(4, 7, "  b", " b")]),
        ("the cat sat", "the dog sat", [(4, 7, "cat", "dog")]),
        ("to the store", "to store", [(3, 7, "the ", "")]),
        ("to store", "to the store", [(3, 3, "", "the ")]),
        ("home", "home.", [(4, 4, "", ".")]),
        ("   ", " ", [(0, 3, "   ", " ")]),  # no token to join: the only way
        ("😀 x", "😀 y", [(2, 3, "x", "y")]),  # code points, not UTF-16 units
    ],
)
def test_examples(old: str, new: str, expected: list[tuple[int, int, str, str]]) -> None:
    changes = check(old, new)

    assert [(e["start"], e["end"], e["old"], e["new"]) for e in changes] == expected


def test_a_text_pasted_twice_is_still_matched_word_by_word() -> None:
    """No word occurs once on each side, so the words that occur as often on both sides
    anchor the match (n-th with n-th), and only what changed is in an edit."""
    old = "We shipped the fix on Monday and the tests pass again. " * 2
    new = (
        "Our shipped the fix on Tuesday and the tests pass again! "
        "We shipped the fix on Monday and the tests pass again!"
    )

    assert [(e["old"], e["new"]) for e in check(old, new)] == [
        ("We", "Our"),
        ("Monday", "Tuesday"),
        (".", "!"),
        (". ", "!"),  # the trailing space went with the stripped answer
    ]


def test_a_spent_budget_leaves_coarser_edits_that_still_hold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old = "one two three four five six seven eight nine ten"
    new = "one TWO three four five SIX seven eight nine TEN"
    fine = check(old, new)
    monkeypatch.setattr(pollex.edits, "WORK_BUDGET", 10)

    coarse = check(old, new)

    assert [e["old"] for e in fine] == ["two", "six", "ten"]
    assert len(coarse) < len(fine)
    assert coarse[0]["old"].startswith("two") and coarse[-1]["old"].endswith("ten")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # Every other word changed: SequenceMatcher on words takes ~0.85 s on this one.
        (
            " ".join(f"y {chr(0x4E00 + i)}" for i in range(2500)),
            "z" + " ".join(f"{chr(0x4E00 + i)} z" for i in range(2500))[:9998],
        ),
        ("a " * 5000, "b " + "a " * 4998 + "b"),  # one word repeated
        (".," * 5000, ",." * 5000),  # marks only
    ],
)
def test_cost_is_bounded_at_the_limit(old: str, new: str) -> None:
    """At `max_text_chars` (10,000) the worst cases measured take ~30 ms here; a loose
    bound, so that a slow CI machine passes, that a quadratic algorithm does not."""
    assert len(old) <= 10_000 and len(new) <= 10_000
    started = time.perf_counter()
    check(old, new)
    assert time.perf_counter() - started < 0.5
