"""Adapters: each speaks one upstream's protocol and nothing else.

An adapter is structural (`Adapter` is a `typing.Protocol`), so a test double needs no
inheritance. The protocol is exactly what the router uses:

- `probe()` is cheap and says whether the upstream can take a request now; the caller
  bounds it with `probe_timeout_s`.
- `stream(chat, finish)` is an async generator of text chunks, yielded the moment they
  arrive. It returns normally only when the upstream's explicit end marker arrived, and
  then `finish` holds the finish reason and usage. Every failure is an `UpstreamError`.
  Closing the generator early (client gone, timeout) closes the upstream connection so
  the upstream stops generating.

A JSON answer is the same stream collected, so the failover and timeout rules are the
same for both (docs/architecture.md); no adapter has a one-shot mode. Every request asks
for the greedy answer (temperature 0): a polish should be the most likely fluent text,
and the same text twice should give the same answer.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    messages: tuple[Message, ...]
    max_tokens: int

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
    """How a stream ended; filled in by the adapter as the end marker arrives.

    `ended` is set only by the upstream's explicit end (`[DONE]` after a finish reason,
    `done: true`, `message_stop`): a stream without it is broken, however it stopped.
    """

    reason: str | None = None
    usage: Usage | None = None
    ended: bool = False


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


class Backends:
    """The registered adapters: by id, and the failover chain."""

    def __init__(self, adapters: Sequence[Adapter], chain: Sequence[Adapter]) -> None:
        self.by_id = {a.id: a for a in adapters}
        self.chain = tuple(chain)

    def listed(self) -> list[Adapter]:
        """Chain order first, then adapters only reachable by `model_id`."""
        return [*self.chain, *(a for a in self.by_id.values() if a not in self.chain)]
