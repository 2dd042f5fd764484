"""MockAdapter: the model-free backend behind `pollex serve --mock`, and its `tidy` rules."""

from __future__ import annotations

import asyncio

import pytest
from helpers import cancel_after_first_chunk, collect, mock_adapter

from pollex.adapters import ChatRequest, Finish, Message, ProbeResult, Usage
from pollex.adapters.mock import MockAdapter, tidy

SYSTEM = "Fix grammar."


def chat(text: str, max_tokens: int = 512) -> ChatRequest:
    return ChatRequest.polish(text, SYSTEM, max_tokens)


async def test_identity_and_probe() -> None:
    adapter = MockAdapter(first_token_timeout_s=4.0)
    assert (adapter.id, adapter.provider, adapter.name) == ("mock", "mock", "Mock")
    assert adapter.first_token_timeout_s == 4.0
    assert await adapter.probe() == ProbeResult(True)
    assert await collect(adapter, chat("a")) == (["A."], Finish("stop", Usage(1, 1), ended=True))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("i went to the store yesterday", "I went to the store yesterday."),
        ("  i   went\tto the store  ", "I went to the store."),
        ("hello , world !", "Hello, world!"),
        ("is it done? yes. i think so", "Is it done? Yes. I think so."),
        ("first line\nsecond line", "First line\nSecond line."),
        ("Already fine.", "Already fine."),
        ("iPhone and i", "IPhone and I."),
        ("ends with a number 42", "Ends with a number 42."),
        ("done!", "Done!"),
        ("", ""),
        ("   \n  ", ""),
    ],
)
def test_tidy(text: str, expected: str) -> None:
    assert tidy(text) == expected


async def test_stream_word_by_word() -> None:
    chunks, finish = await collect(mock_adapter(), chat("i went to the store yesterday"))
    assert chunks == ["I ", "went ", "to ", "the ", "store ", "yesterday."]
    assert finish == Finish("stop", Usage(6, 6), ended=True)


async def test_stream_uses_the_last_message() -> None:
    request = ChatRequest((Message("system", "ignored words here"), Message("user", "a b")), 10)
    chunks, finish = await collect(mock_adapter(), request)
    assert "".join(chunks) == "A b."
    assert finish == Finish("stop", Usage(2, 2), ended=True)


@pytest.mark.parametrize(
    ("max_tokens", "text", "reason", "usage"),
    [
        (2, "I went", "length", Usage(6, 2)),
        (5, "I went to the store ", "length", Usage(6, 5)),
        (6, "I went to the store yesterday.", "stop", Usage(6, 6)),
        (100, "I went to the store yesterday.", "stop", Usage(6, 6)),
    ],
)
async def test_stream_max_tokens(max_tokens: int, text: str, reason: str, usage: Usage) -> None:
    chunks, finish = await collect(
        mock_adapter(), chat("i went to the store yesterday", max_tokens)
    )
    assert "".join(chunks).rstrip() == text.rstrip()
    assert finish == Finish(reason, usage, ended=True)  # a cut at max_tokens is an end


async def test_stream_empty_text() -> None:
    assert await collect(mock_adapter(), chat("")) == ([], Finish("stop", Usage(0, 0), ended=True))


async def test_delay_paces_the_stream_and_closing_stops_it() -> None:
    loop = asyncio.get_running_loop()
    adapter = mock_adapter(delay_s=0.01)
    finish = Finish()
    stream = adapter.stream(chat("one two three four five six seven eight"), finish)
    started = loop.time()
    assert await stream.__anext__() == "One "
    assert await stream.__anext__() == "two "
    assert loop.time() - started >= 0.015
    await stream.aclose()
    assert finish == Finish()  # never finished: no end marker, no reason, no usage


async def test_cancelling_a_slow_stream() -> None:
    finish = Finish()
    await cancel_after_first_chunk(mock_adapter(delay_s=0.05).stream(chat("a b c d e f"), finish))
    assert not finish.ended
