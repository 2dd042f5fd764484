"""A request ended by shutdown is logged as `shutting_down`, not `no_backend` (issue 9)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from fakes import closed_port_url
from helpers import fast_config
from structlog.testing import capture_logs

from pollex.server import serve


async def test_requests_ended_by_shutdown_are_logged_as_shutting_down(llama: Any) -> None:
    llama.fake.gate = asyncio.Event()  # the upstream never finishes on its own
    url = closed_port_url()
    stop = asyncio.Event()
    config = fast_config(
        llamacpp_url=llama.url, shutdown_grace_s=0.2, port=int(url.rsplit(":", 1)[1])
    )
    with capture_logs() as logs:
        server = asyncio.create_task(serve(config, stop))
        async with aiohttp.ClientSession() as session:
            resp = await _first_delta(session, url)
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


async def _first_delta(session: aiohttp.ClientSession, url: str) -> aiohttp.ClientResponse:
    """A stream that has started, once pollex listens."""
    for _ in range(200):
        try:
            resp = await session.post(f"{url}/api/polish", json={"text": "x", "stream": True})
            break
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.01)
    else:
        raise AssertionError("pollex did not start")
    received = b""
    while b"event: delta" not in received:
        received += await resp.content.readany()
    return resp
