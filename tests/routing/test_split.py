"""Cutting a long text into pieces that fit a context: nothing lost, no word cut."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pollex.routing.split import split

PARAGRAPHS = (
    "We has finished the migration yesterday. All service are running now.\n\n"
    "The old database will be delete next week! Please tell me if you needs it.\n\n\n"
    "Thanks, and sorry for the late answer."
)


def joined(pieces: list[tuple[str, str]]) -> str:
    return "".join(before + piece for before, piece in pieces)


def test_a_text_that_fits_is_one_piece() -> None:
    assert split(PARAGRAPHS, len(PARAGRAPHS)) == [("", PARAGRAPHS)]


def test_an_empty_text_has_no_pieces() -> None:
    assert split(" \n\n ", 10) == []


def test_blank_lines_first() -> None:
    pieces = split(PARAGRAPHS, 80)
    assert [before for before, _ in pieces] == ["", "\n\n", "\n\n\n"]
    assert joined(pieces) == PARAGRAPHS


def test_then_sentence_ends_keeping_closing_quotes_with_their_sentence() -> None:
    text = 'He said "we is ready." Then they left! (Nobody knew why.) The end.'
    pieces = split(text, 25)
    assert [piece for _, piece in pieces] == [
        'He said "we is ready."',
        "Then they left!",
        "(Nobody knew why.)",
        "The end.",
    ]
    assert joined(pieces) == text


def test_then_spaces_never_inside_a_word() -> None:
    text = "a sentence without any end that goes on and on " + "x" * 30 + " and on"
    pieces = split(text, 12)
    assert all(len(piece) <= 12 or " " not in piece for _, piece in pieces)
    assert ("x" * 30) in [piece for _, piece in pieces]  # too long, but whole
    assert joined(pieces) == text


def test_whitespace_around_the_text_is_not_a_piece() -> None:
    pieces = split("\n  one two three.  Four five six.\n", 16)
    assert joined(pieces) == "one two three.  Four five six."
    assert pieces[1][0] == "  "  # the separator between pieces, byte for byte


texts = st.text(alphabet=st.sampled_from(list("ab .!?\n\t\"')xy")), min_size=0, max_size=300)


@given(texts, st.integers(min_value=1, max_value=80))
def test_joined_pieces_give_the_text_back(text: str, limit: int) -> None:
    pieces = split(text, limit)
    assert joined(pieces) == text.strip()
    for before, piece in pieces:
        assert piece and piece == piece.strip()
        assert before == "" or not before.strip()
        assert len(piece) <= limit or not re.search(r"\s", piece)
    assert pieces == [] or pieces[0][0] == ""


@pytest.mark.parametrize("limit", [1, 5, 40])
def test_every_piece_but_single_words_fits(limit: int) -> None:
    for _, piece in split(PARAGRAPHS * 3, limit):
        assert len(piece) <= limit or " " not in piece
