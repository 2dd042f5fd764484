"""What an OpenAI chat completion request asks of pollex (`POST /v1/chat/completions`).

The `model` field picks the mode and the backends:

- absent, `pollex` or `pollex:polish`: polish mode via the failover chain. The LAST user
  message is polished with pollex's own system prompt; other messages (a plugin's system
  prompt, earlier turns) are dropped, so any chat plugin becomes a polishing tool.
- `pollex:chat`: the messages are passed through as they are, via the chain.
- a backend id (`GET /v1/models` lists them): passed through, that backend first, the
  chain after it if it fails before its first token.
- anything else: 404 `model_not_found`.

A `developer` message (newer OpenAI clients send it instead of `system`) is a `system`
message. Streaming is decided by the body's `stream` field only (no plugin surveyed sends an
`Accept` header that means it). Sampling fields (`temperature`, `top_p`, `stop`, ...),
`tools`, `n` and anything unknown are ignored: pollex always asks for one greedy answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pollex.adapters import ChatRequest, Message
from pollex.errors import BadRequest
from pollex.routing.jobs import ChatJob, Job, PolishJob

POLISH_MODELS = frozenset({"pollex", "pollex:polish"})
CHAT_MODEL = "pollex:chat"
ROLES = ("system", "developer", "user", "assistant", "tool")


@dataclass(frozen=True)
class CompletionParams:
    backend_id: str | None  # None: the failover chain decides
    polish: bool
    messages: tuple[Message, ...]
    stream: bool
    include_usage: bool
    max_tokens: int | None

    @classmethod
    def parse(cls, body: Any, max_text_chars: int) -> CompletionParams:
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        model = body.get("model")
        if model is None:
            model = "pollex"
        if not isinstance(model, str):
            raise BadRequest("model: must be a string")
        messages = _messages(body.get("messages"))
        polish = model in POLISH_MODELS
        _check_size(messages, polish, max_text_chars)
        stream = body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise BadRequest("stream: must be true or false")
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        return cls(
            backend_id=None if polish or model == CHAT_MODEL else model,
            polish=polish,
            messages=messages,
            stream=bool(stream),
            include_usage=include_usage,
            max_tokens=_max_tokens(body),
        )

    def job(self, system_prompt: str, max_output_tokens: int) -> Job:
        """A polish (bounded by the text, and by `max_tokens` when the client asks for
        less), or the messages passed through."""
        limit = min(self.max_tokens or max_output_tokens, max_output_tokens)
        if self.polish:
            return PolishJob(_last_user_text(self.messages), system_prompt, limit)
        return ChatJob(ChatRequest(self.messages, limit))


def _messages(value: Any) -> tuple[Message, ...]:
    if not isinstance(value, list):
        raise BadRequest("messages: required, must be an array of messages")
    if not value:
        raise BadRequest("messages: must not be empty")
    messages = []
    for index, item in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(item, dict):
            raise BadRequest(f"{where}: must be an object")
        role = item.get("role")
        if role not in ROLES:
            raise BadRequest(f"{where}.role: must be one of {', '.join(ROLES)}")
        # Newer OpenAI clients send `developer` where older ones sent `system`; the
        # backends behind pollex know only `system`.
        if role == "developer":
            role = "system"
        messages.append(Message(role, _content(item.get("content"), f"{where}.content")))
    return tuple(messages)


def _content(value: Any, where: str) -> str:
    """A string, or OpenAI's array of parts of which pollex takes the text ones.

    Parts are joined with a newline: plugins send separate blocks (context, question)
    as separate parts, and gluing them together would merge their edge words.
    """
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise BadRequest(f"{where}: must be a string or an array of text parts")
    texts = []
    for index, part in enumerate(value):
        if not (
            isinstance(part, dict)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        ):
            raise BadRequest(f'{where}[{index}]: only {{"type": "text", "text": str}} parts')
        texts.append(part["text"])
    return "\n".join(texts)


def _check_size(messages: tuple[Message, ...], polish: bool, limit: int) -> None:
    """`max_text_chars` applies to what reaches the model: in polish mode a plugin's long
    system prompt is dropped, so only the text to polish counts."""
    if polish:
        if len(_last_user_text(messages)) > limit:
            raise BadRequest(f"messages: the text to polish is longer than {limit} characters")
    elif sum(len(m.content) for m in messages) > limit:
        raise BadRequest(f"messages: longer than {limit} characters in total")


def _last_user_text(messages: tuple[Message, ...]) -> str:
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role == "user":
            text = messages[index].content
            if not text.strip():
                raise BadRequest(f"messages[{index}].content: must not be empty")
            return text
    raise BadRequest("messages: polish mode needs a user message (the text to polish)")


def _max_tokens(body: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadRequest(f"{name}: must be a positive integer")
        return value
    return None
