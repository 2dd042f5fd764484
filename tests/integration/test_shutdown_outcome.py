"""A request ended by shutdown is logged as `shutting_down`, not `no_backend` (issue 9)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from helpers import start_serving, stream_until
from structlog.testing import capture_logs


async def test_requests_ended_by_shutdown_are_logged_as_shutting_down(llama: Any) -> None:
    llama.fake.gate = asyncio.Event()  # the upstream never finishes on its own
    with capture_logs() as logs:
        stop, server, url = await start_serving(llamacpp_url=llama.url, shutdown_grace_s=0.2)
        async with aiohttp.ClientSession() as session:
            stream = {"text": "x", "stream": True}
            resp, _ = await stream_until(session, f"{url}/api/polish", stream, b"event: delta")
            json_request = asyncio.create_task(
                session.post(f"{url}/api/polish", json={"text": "y"})
            )
            await asyncio.sleep(0.05)
            stop.set()
            await asyncio.wait_for(resp.read(), 5)
            await asyncio.wait_for(json_request, 5)
        await asyncio.wait_for(server, 5)

    polishes = [e for e in logs if e["event"] == "request" and e.get("route") == "/api/polish"]
    assert [e["outcome"] for e in polishes] == ["shutting_down", "shutting_down"]
    assert sorted(e["status"] for e in polishes) == [200, 503]  # the stream, the JSON request
