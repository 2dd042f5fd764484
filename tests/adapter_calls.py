"""What the adapter tests share: the request they send and how they read a stream."""

from __future__ import annotations

import pytest

from pollex.adapters import Adapter, ChatRequest, Finish
from pollex.errors import UpstreamError

SYSTEM = "Fix grammar. Output only the corrected text."
TEXT = "i goes to store yesterday"
CHAT = ChatRequest.polish(TEXT, SYSTEM, 64)


async def collect(adapter: Adapter, chat: ChatRequest = CHAT) -> tuple[list[str], Finish]:
    finish = Finish()
    return [chunk async for chunk in adapter.stream(chat, finish)], finish


async def collect_error(adapter: Adapter) -> tuple[list[str], UpstreamError]:
    """The chunks that arrived before the stream failed, and the failure."""
    chunks: list[str] = []
    with pytest.raises(UpstreamError) as info:
        async for chunk in adapter.stream(CHAT, Finish()):
            chunks.append(chunk)
    return chunks, info.value
