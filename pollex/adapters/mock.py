"""A backend that needs no model: deterministic, rule-based tidying, streamed word by word.

It lets a fresh machine run `pollex serve --mock` and every client be tried end to end.
The rules are deliberately few (spacing, a capital `I`, sentence capitals, a final full
stop), so its output is predictable enough to print in the README.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator

from pollex.adapters import ChatRequest, Finish, ProbeResult, Usage

_SPACES = re.compile(r"[ \t]+")
_LONE_I = re.compile(r"\bi\b")
_SENTENCE_START = re.compile(r"(^|[.!?]\s+)([a-z])")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")
_WORDS = re.compile(r"\S+\s*")


def tidy(text: str) -> str:
    lines = []
    for line in text.strip().splitlines():
        line = _SPACES.sub(" ", line).strip()
        line = _SPACE_BEFORE_PUNCT.sub(r"\1", line)
        line = _LONE_I.sub("I", line)
        line = _SENTENCE_START.sub(lambda m: m.group(1) + m.group(2).upper(), line)
        lines.append(line)
    result = "\n".join(lines)
    if result and result[-1].isalnum():
        result += "."
    return result


class MockAdapter:
    id = "mock"
    provider = "mock"
    name = "Mock"
    host = "local"

    def __init__(self, *, first_token_timeout_s: float, delay_s: float = 0.0) -> None:
        self._delay = delay_s
        self.first_token_timeout_s = first_token_timeout_s

    async def probe(self) -> ProbeResult:
        return ProbeResult(True)

    async def stream(self, chat: ChatRequest, finish: Finish) -> AsyncGenerator[str, None]:
        source = chat.messages[-1].content
        words = _WORDS.findall(tidy(source))
        for index, word in enumerate(words):
            if index >= chat.max_tokens:
                finish.reason = "length"
                break
            if self._delay:
                await asyncio.sleep(self._delay)
            yield word
        else:
            finish.reason = "stop"
        finish.ended = True
        finish.usage = Usage(len(source.split()), min(len(words), chat.max_tokens))
