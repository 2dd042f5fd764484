"""Graceful shutdown of `pollex.server.serve`: finish what runs, end what overstays, exit."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from helpers import start_serving, stream_until

STREAM = {"text": "x", "stream": True}


async def test_running_stream_finishes_within_grace(llama: Any) -> None:
    llama.fake.gate = asyncio.Event()
    stop, server, url = await start_serving(llamacpp_url=llama.url, shutdown_grace_s=5)
    async with aiohttp.ClientSession() as session:
        resp, received = await stream_until(session, f"{url}/api/polish", STREAM, b"event: delta")

        stop.set()
        await asyncio.sleep(0.05)
        with pytest.raises(aiohttp.ClientConnectionError):  # no longer accepting
            async with aiohttp.ClientSession() as other, other.get(f"{url}/health"):
                pass
        llama.fake.gate.set()
        received += await resp.read()

    await asyncio.wait_for(server, 5)
    assert b"event: done" in received


async def test_stream_over_grace_ends_with_shutting_down(llama: Any) -> None:
    llama.fake.gate = asyncio.Event()
    # Two slots: the JSON request is in flight upstream too (not waiting in pollex's queue).
    stop, server, url = await start_serving(
        llamacpp_url=llama.url, llamacpp_slots=2, shutdown_grace_s=0.2
    )
    async with aiohttp.ClientSession() as session:
        resp, received = await stream_until(session, f"{url}/api/polish", STREAM, b"event: delta")
        json_request = asyncio.create_task(session.post(f"{url}/api/polish", json={"text": "y"}))
        for _ in range(100):
            if llama.fake.streams_started == 2:
                break
            await asyncio.sleep(0.01)
        assert llama.fake.streams_started == 2

        stop.set()
        received += await asyncio.wait_for(resp.read(), 5)
        json_resp = await asyncio.wait_for(json_request, 5)

        assert json_resp.status == 503
        assert await json_resp.json() == {"error": "server shutting down"}

    await asyncio.wait_for(server, 5)  # serve() returns: the process exits 0
    assert received.endswith(
        b'event: error\ndata: {"error":"server shutting down","status":503}\n\n'
    )
    assert llama.fake.cancelled.is_set()  # and the upstream was told
