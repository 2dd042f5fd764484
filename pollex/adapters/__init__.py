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
    """What a probe found. `slots` and `context` (tokens per slot) are what the upstream
    says of itself, when it says (llama-server's `/props`)."""

    available: bool
    reason: str | None = None
    slots: int | None = None
    context: int | None = None


class Adapter(Protocol):
    """One host of one provider. Several adapters may share an `id` (one model for clients,
    several servers): `host` tells them apart."""

    id: str
    provider: str
    name: str
    host: str
    first_token_timeout_s: float

    async def probe(self) -> ProbeResult: ...

    def stream(self, chat: ChatRequest, finish: Finish) -> AsyncGenerator[str, None]: ...


@dataclass(frozen=True)
class Backend:
    """One model for clients: its id, served by one or more hosts of one provider.

    Per host: `slots_setting` (from the configuration) overrides what the host says of
    itself, which overrides `slots_default`; None is "no limit". `context_setting` is the
    context in tokens when the configuration says it (else the host's own word, if any).
    """

    hosts: tuple[Adapter, ...]
    slots_setting: int | None = None
    slots_default: int | None = 1
    context_setting: int | None = None

    @property
    def id(self) -> str:
        return self.hosts[0].id

    @property
    def provider(self) -> str:
        return self.hosts[0].provider

    @property
    def name(self) -> str:
        return self.hosts[0].name


class Backends:
    """The registered backends: by model id, and the failover chain."""

    def __init__(self, backends: Sequence[Backend], chain: Sequence[Backend]) -> None:
        self.by_id = {b.id: b for b in backends}
        self.chain = tuple(chain)

    @classmethod
    def of(cls, adapters: Sequence[Adapter], chain: Sequence[Adapter] | None = None) -> Backends:
        """Backends of one host each, with no slot limit (tests, anything built by hand)."""
        backends = {a.id: Backend((a,), slots_default=None) for a in adapters}
        return cls(list(backends.values()), [backends[a.id] for a in chain or adapters])

    def listed(self) -> list[Backend]:
        """Chain order first, then backends only reachable by `model_id`."""
        return [*self.chain, *(b for b in self.by_id.values() if b not in self.chain)]

    def hosts(self) -> list[Adapter]:
        return [host for backend in self.by_id.values() for host in backend.hosts]
