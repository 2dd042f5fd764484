"""What a request asks of a backend: the output bound, and pieces that fit the context."""

from __future__ import annotations

import pytest

from pollex.adapters import ChatRequest, Message
from pollex.routing.jobs import ChatJob, PolishJob, estimate_tokens, output_bound

PROMPT = "Fix the grammar. " * 20  # 340 characters: about 114 tokens
PARAGRAPH = "We has meet the customer yesterday and they was happy with the demo. "


@pytest.mark.parametrize(
    ("chars", "limit", "bound"),
    [
        (25, 1024, 2 * 9 + 64),  # a short text: a short answer
        (3, 1024, 2 * 1 + 64),
        (3000, 1024, 1024),  # the setting caps it
        (300, 100, 100),  # as does a client that asks for less
    ],
)
def test_output_bound(chars: int, limit: int, bound: int) -> None:
    assert output_bound(chars, limit) == bound


def test_estimate_rounds_up() -> None:
    assert [estimate_tokens(n) for n in (0, 1, 3, 4)] == [0, 1, 1, 2]


def test_a_polish_that_fits_is_one_request_bounded_by_its_text() -> None:
    job = PolishJob("i has went", PROMPT, 1024)
    [(before, chat)] = list(job.requests(2048))
    assert before == ""
    assert chat == ChatRequest.polish("i has went", PROMPT, output_bound(10, 1024))


def test_an_unknown_context_never_splits() -> None:
    job = PolishJob(PARAGRAPH * 100, PROMPT, 1024)
    assert len(list(job.requests(None))) == 1


def test_a_long_text_is_cut_to_fit_the_context() -> None:
    text = "\n\n".join([(PARAGRAPH * 3).strip()] * 10)
    job = PolishJob(text, PROMPT, 1024)
    requests = list(job.requests(512))
    assert len(requests) > 1
    pieces = [chat.messages[1].content for _, chat in requests]
    joined = "".join(before + piece for (before, _), piece in zip(requests, pieces, strict=True))
    assert joined == text
    for _, chat in requests:
        piece = chat.messages[1].content
        needed = estimate_tokens(len(PROMPT)) + 32 + estimate_tokens(len(piece)) + chat.max_tokens
        assert needed <= 512
        assert chat.max_tokens == output_bound(len(piece), 1024)


def test_the_longest_piece_is_the_longest_that_fits() -> None:
    job = PolishJob(PARAGRAPH * 50, PROMPT, 1024)
    chars = job.piece_chars(512)
    assert chars is not None
    assert job._fits(chars, 512) and not job._fits(chars + 1, 512)


def test_a_chat_is_passed_through() -> None:
    chat = ChatRequest((Message("user", "hello"),), 50)
    job = ChatJob(chat)
    assert list(job.requests(10)) == [("", chat)]
    assert job.input_chars == 5
