"""What a request asks of a backend: a polish, or messages passed through.

A polish asks the upstream for at most `min(max_output_tokens, 2 * estimated input tokens
+ 64)` tokens, input tokens estimated as `ceil(chars / 3)`. Three characters per token
over-counts English for the small models pollex runs (about four is typical), so the
estimate errs towards allowing more; twice the input plus 64 leaves room for a polish that
lengthens a terse text, while polishing more often shortens. What the bound saves is a
rambling small model holding the Nano's only slot for minutes.

A text that would not fit a backend's context together with the system prompt and its
output bound is polished in pieces, in order, on one backend (`pollex.routing.split`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from pollex.adapters import ChatRequest
from pollex.routing.split import split

CHARS_PER_TOKEN = 3
OUTPUT_SLACK_TOKENS = 64
# What a chat template adds around the messages (role markers), in tokens; generous.
TEMPLATE_TOKENS = 32


def estimate_tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def output_bound(chars: int, max_output_tokens: int) -> int:
    return min(max_output_tokens, 2 * estimate_tokens(chars) + OUTPUT_SLACK_TOKENS)


class Job(Protocol):
    """What is asked of one backend: its upstream requests, each with the text that goes to
    the client before its answer (the separator between pieces)."""

    @property
    def input_chars(self) -> int: ...

    def requests(self, context_tokens: int | None) -> Iterator[tuple[str, ChatRequest]]: ...


@dataclass(frozen=True)
class ChatJob:
    """Messages passed through as they are (OpenAI's `pollex:chat` and backend models)."""

    chat: ChatRequest

    @property
    def input_chars(self) -> int:
        return sum(len(m.content) for m in self.chat.messages)

    def requests(self, context_tokens: int | None) -> Iterator[tuple[str, ChatRequest]]:
        yield "", self.chat


@dataclass(frozen=True)
class PolishJob:
    text: str
    system_prompt: str
    max_output_tokens: int

    @property
    def input_chars(self) -> int:
        return len(self.text)

    def requests(self, context_tokens: int | None) -> Iterator[tuple[str, ChatRequest]]:
        limit = self.piece_chars(context_tokens)
        pieces = split(self.text, limit) if limit is not None else [("", self.text)]
        for before, piece in pieces:
            bound = output_bound(len(piece), self.max_output_tokens)
            yield before, ChatRequest.polish(piece, self.system_prompt, bound)

    def piece_chars(self, context_tokens: int | None) -> int | None:
        """The longest piece (in characters) that fits `context_tokens` with the prompt and
        its output bound; None when the whole text fits or the context is unknown."""
        if context_tokens is None or self._fits(len(self.text), context_tokens):
            return None
        low, high = 1, len(self.text)  # the answer is in [low, high): high does not fit
        while high - low > 1:
            middle = (low + high) // 2
            if self._fits(middle, context_tokens):
                low = middle
            else:
                high = middle
        return low

    def _fits(self, chars: int, context_tokens: int) -> bool:
        needed = (
            estimate_tokens(len(self.system_prompt))
            + TEMPLATE_TOKENS
            + estimate_tokens(chars)
            + output_bound(chars, self.max_output_tokens)
        )
        return needed <= context_tokens
