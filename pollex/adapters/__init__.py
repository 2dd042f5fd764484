"""Adapters: each speaks one upstream's protocol and nothing else.

An adapter is structural (`Adapter` is a `typing.Protocol`), so a test double needs no
inheritance. Contract:

- `probe()` is cheap and says whether the upstream can take a request now; the caller
  bounds it with `probe_timeout_s`.
- `stream(chat, finish)` is an async generator of text chunks, yielded the moment they
  arrive. It returns normally only when the upstream's explicit end marker arrived, and
  then `finish` holds the finish reason and usage. Every failure is an `UpstreamError`.
  Closing the generator early (client gone, timeout) closes the upstream connection so
  the upstream stops generating.
- `complete(chat)` is the one-shot form, using the upstream's non-stream mode.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    messages: tuple[Message, ...]
    max_tokens: int
    temperature: float = 0.0

    @classmethod
    def polish(cls, text: str, system_prompt: str, max_tokens: int) -> ChatRequest:
        return cls((Message("system", system_prompt), Message("user", text)), max_tokens)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    tokens_per_second: float | None = None

    def as_dict(self) -> dict[str, int | float | None]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "tokens_per_second": self.tokens_per_second,
        }


@dataclass(slots=True)
class Finish:
    """How a stream ended; filled in by the adapter when the end marker arrives."""

    reason: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    finish: Finish = field(default_factory=Finish)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    available: bool
    reason: str | None = None


class Adapter(Protocol):
    id: str
    provider: str
    name: str
    first_token_timeout_s: float

    async def probe(self) -> ProbeResult: ...

    def stream(self, chat: ChatRequest, finish: Finish) -> AsyncGenerator[str, None]: ...

    async def complete(self, chat: ChatRequest) -> Completion: ...
