"""API key, rate limit and hostile clients against pollex over real sockets."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import pytest
from helpers import eventually

from pollex.web.keys import METRICS

KEY = "s3cret-key"


@pytest.mark.parametrize(
    ("headers", "status", "error"),
    [
        ({}, 401, "missing API key"),
        ({"X-API-Key": "nope"}, 401, "invalid API key"),
        ({"Authorization": "Bearer nope"}, 401, "invalid API key"),
        ({"Authorization": "Basic czNjcmV0"}, 401, "missing API key"),
        ({"X-API-Key": KEY}, 200, None),
        ({"Authorization": f"Bearer {KEY}"}, 200, None),
    ],
)
async def test_api_key(
    pollex: Any, headers: dict[str, str], status: int, error: str | None
) -> None:
    client = await pollex(mock=True, api_key=KEY)

    resp = await client.get("/api/models", headers=headers)

    assert resp.status == status
    if error:
        assert await resp.json() == {"error": error}


@pytest.mark.parametrize("path", ["/api/health", "/health", "/metrics"])
async def test_exempt_routes_need_no_key(pollex: Any, path: str) -> None:
    client = await pollex(mock=True, api_key=KEY, rate_limit_per_minute=1)

    statuses = [(await client.get(path)).status for _ in range(3)]
    preflight = await client.options("/api/polish")

    assert statuses == [200, 200, 200]
    assert preflight.status == 204


async def test_rate_limit_with_retry_after(pollex: Any) -> None:
    client = await pollex(mock=True, rate_limit_per_minute=2)

    statuses = [(await client.post("/api/polish", json={"text": "x"})).status for _ in range(2)]
    limited = await client.post("/api/polish", json={"text": "x"})

    assert statuses == [200, 200]
    assert limited.status == 429
    assert await limited.json() == {"error": "rate limit exceeded"}
    assert 1 <= int(limited.headers["Retry-After"]) <= 60


async def test_valid_key_is_never_limited(pollex: Any) -> None:
    client = await pollex(mock=True, api_key=KEY, rate_limit_per_minute=1)

    statuses = [
        (await client.get("/api/models", headers={"X-API-Key": KEY})).status for _ in range(5)
    ]

    assert statuses == [200] * 5


async def test_guessing_keys_ends_in_429(pollex: Any) -> None:
    client = await pollex(mock=True, api_key=KEY, rate_limit_per_minute=3)

    statuses = [
        (await client.get("/api/models", headers={"X-API-Key": f"guess{n}"})).status
        for n in range(5)
    ]

    assert statuses == [401, 401, 401, 429, 429]
    # The right key still works from the same address: it is not rate-limited.
    assert (await client.get("/api/models", headers={"X-API-Key": KEY})).status == 200


@pytest.mark.parametrize(("trust", "separate"), [(True, True), (False, False)])
async def test_proxy_headers_only_when_trusted(pollex: Any, trust: bool, separate: bool) -> None:
    client = await pollex(mock=True, rate_limit_per_minute=1, trust_proxy_headers=trust)

    first = await client.post(
        "/api/polish", json={"text": "x"}, headers={"CF-Connecting-IP": "198.51.100.1"}
    )
    second = await client.post(
        "/api/polish", json={"text": "x"}, headers={"X-Forwarded-For": "198.51.100.2"}
    )

    assert first.status == 200
    assert second.status == (200 if separate else 429)


async def test_huge_chunked_body_without_length_is_413(pollex: Any) -> None:
    client = await pollex(mock=True, max_body_bytes=1024)

    async def body() -> Any:
        yield b'{"text": "'
        for _ in range(100):
            yield b"a" * 1024
        yield b'"}'

    headers = {"Content-Type": "application/json"}
    async with client.post("/api/polish", data=body(), headers=headers) as resp:
        assert resp.status == 413
        assert await resp.json() == {"error": "request body too large"}


async def test_clients_leaving_at_every_point_do_not_hurt_others(pollex: Any) -> None:
    client = await pollex(mock=True)
    host, port = client.host, client.port
    request = (
        b"POST /api/polish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: 40\r\n\r\n" + b'{"text": "i goes home", "stream": true}'.ljust(40)
    )
    for cut in (0, 10, len(request) - 20, len(request)):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request[:cut])
        await writer.drain()
        if cut == len(request):
            await reader.readuntil(b"event: delta")
        writer.close()
        await writer.wait_closed()

    resp = await client.post("/api/polish", json={"text": "still serving"})
    assert (await resp.json())["polished"] == "Still serving."


async def test_slow_reader_backpressure_reaches_the_upstream(llama: Any, pollex: Any) -> None:
    """A client that does not read makes pollex stop reading the upstream: nothing piles up."""
    chunk = (
        b'data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"'
        + b"x" * 16000
        + b'"}}]}\n\n'
    )
    llama.fake.stream_chunks = [chunk] * 2000  # 32 MB if it were all sent
    client = await pollex(llamacpp_url=llama.url, max_output_chars=10**9, idle_timeout_s=0.5)

    body = b'{"text": "x", "stream": true}'
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(
        b"POST /api/polish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    await writer.drain()
    await asyncio.wait_for(llama.fake.cancelled.wait(), 5)  # idle timeout ended it
    in_flight = client.app[METRICS].streams_in_flight
    await eventually(lambda: in_flight._value.get() == 0, timeout=3)  # and its last write

    assert llama.fake.streams_completed == 0
    writer.close()
    await writer.wait_closed()
    del reader


async def test_unknown_route_under_v1_gets_openai_error_shape(pollex: Any) -> None:
    client = await pollex(mock=True)

    resp = await client.get("/v1/nothing-here")

    body = await resp.json()
    assert resp.status == 404
    assert body == {
        "error": {"message": "not found", "type": "invalid_request_error", "code": None}
    }


async def test_many_concurrent_clients(pollex: Any) -> None:
    client = await pollex(mock=True)

    async def one(n: int) -> int:
        async with (
            aiohttp.ClientSession() as session,
            session.post(client.make_url("/api/polish"), json={"text": f"text number {n}"}) as resp,
        ):
            return resp.status

    assert await asyncio.gather(*(one(n) for n in range(50))) == [200] * 50
