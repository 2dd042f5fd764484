"""The two stream formats an answer can take: pollex's SSE events and OpenAI's chunks.

A `Wire` turns the moments of one answer (it starts, text arrives, it is done, it failed)
into bytes; the exchange decides when, the wire decides what. Both are pure: no I/O, no
clock. The part of a text event around the text is encoded once per answer, so a token
costs one `json.dumps` of its text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from pollex.adapters import Adapter, Usage
from pollex.parsing import encodable
from pollex.routing.router import Served
from pollex.web.sse import dumps, encode

DONE = encode(None, "[DONE]")


@dataclass(frozen=True, slots=True)
class Answer:
    """A served answer with its timings, as both APIs report it."""

    served: Served
    elapsed_ms: int
    ttft_ms: int


class Wire(Protocol):
    def queued(self, position: int, model: str, estimated_wait_s: float | None) -> bytes: ...

    def start(self, adapter: Adapter, fallback_from: str | None) -> bytes: ...

    def text(self, chunk: str) -> bytes: ...

    def done(self, answer: Answer) -> bytes: ...

    def error(self, message: str, status: int) -> bytes: ...


# --- pollex's events (/api/polish) ------------------------------------------------------

DELTA_PREFIX = b'event: delta\ndata: {"text":'
DELTA_SUFFIX = b"}\n\n"


class PollexWire:
    """`queued`... while waiting for a slot, `start`, `delta`..., then `done` or `error`
    (README: the API).

    `edits_of` is the submitted text when the request asked for `edits`: they are computed
    once, for `done`, never per token.
    """

    def __init__(self, request_id: str, edits_of: str | None = None) -> None:
        self._request_id = request_id
        self._edits_of = edits_of

    def queued(self, position: int, model: str, estimated_wait_s: float | None) -> bytes:
        wait = None if estimated_wait_s is None else round(estimated_wait_s, 1)
        return encode("queued", {"position": position, "model": model, "estimated_wait_s": wait})

    def start(self, adapter: Adapter, fallback_from: str | None) -> bytes:
        return encode(
            "start",
            {
                "request_id": self._request_id,
                "model": adapter.id,
                "provider": adapter.provider,
                "fallback_from": fallback_from,
            },
        )

    def text(self, chunk: str) -> bytes:
        try:
            return DELTA_PREFIX + dumps(chunk).encode() + DELTA_SUFFIX
        except UnicodeEncodeError:
            return DELTA_PREFIX + dumps(encodable(chunk)).encode() + DELTA_SUFFIX

    def done(self, answer: Answer) -> bytes:
        return encode("done", done_payload(answer, self._edits_of))

    def error(self, message: str, status: int) -> bytes:
        return encode("error", {"error": message, "status": status})


def done_payload(answer: Answer, edits_of: str | None = None) -> dict[str, Any]:
    served = answer.served
    polished = served.text.strip()
    done: dict[str, Any] = {
        "polished": polished,
        "model": served.adapter.id,
        "provider": served.adapter.provider,
        "elapsed_ms": answer.elapsed_ms,
        "ttft_ms": answer.ttft_ms,
        "fallback_from": served.fallback_from,
        "finish_reason": served.finish.reason,
    }
    if served.finish.usage is not None:
        done["usage"] = served.finish.usage.as_dict()
    if edits_of is not None:
        from pollex.edits import edits  # loaded by the first request that asks

        done["edits"] = edits(edits_of, polished)
    return done


# --- OpenAI's chunks (/v1/chat/completions) ---------------------------------------------


def usage_object(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


class OpenAIWire:
    """`chat.completion.chunk` events that share one id, `created` and `model`: the role
    first, content deltas, the finish chunk, the usage chunk if asked for, `[DONE]`."""

    def __init__(self, completion_id: str, created: int, include_usage: bool) -> None:
        self._id = completion_id
        self._created = created
        self._include_usage = include_usage
        self._base: dict[str, Any] = {}
        self._content_head = b""

    def queued(self, position: int, model: str, estimated_wait_s: float | None) -> bytes:
        """Nothing: an OpenAI stream carries no foreign events (keep-alives go on)."""
        return b""

    def start(self, adapter: Adapter, fallback_from: str | None) -> bytes:
        self._base = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": adapter.id,
        }
        head = dumps(self._base)[:-1]  # the object left open, to append `choices`
        self._content_head = f'data: {head},"choices":[{{"index":0,"delta":{{"content":'.encode()
        return self._choice({"role": "assistant", "content": ""}, None)

    def text(self, chunk: str) -> bytes:
        try:
            content = dumps(chunk).encode()
        except UnicodeEncodeError:
            content = dumps(encodable(chunk)).encode()
        return self._content_head + content + b'},"finish_reason":null}]}\n\n'

    def done(self, answer: Answer) -> bytes:
        finish = answer.served.finish
        tail = self._choice({}, finish.reason or "stop")
        if self._include_usage and finish.usage is not None:
            tail += encode(None, {**self._base, "choices": [], "usage": usage_object(finish.usage)})
        return tail + DONE

    def error(self, message: str, status: int) -> bytes:
        # `code` is a string or null in OpenAI's errors; the status is the HTTP one's business.
        return encode(None, {"error": {"message": message, "type": "server_error", "code": None}})

    def _choice(self, delta: dict[str, str], reason: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": reason}
        return encode(None, {**self._base, "choices": [choice]})
