"""Whom the rate limit counts (issue 9, items 6 and 9): the client a trusted proxy
reports, never the address a client writes itself; model listings are not counted."""

from __future__ import annotations

from typing import Any

KEY = "identity-test-key"


async def test_rotating_forwarded_for_does_not_escape_the_limit(pollex: Any) -> None:
    """350 wrong keys with a new left-most X-Forwarded-For each got no 429 before."""
    client = await pollex(mock=True, api_key=KEY, rate_limit_per_minute=3, trust_proxy_headers=True)

    statuses = [
        (
            await client.get(
                "/api/models",
                headers={"X-API-Key": f"guess{n}", "X-Forwarded-For": f"10.0.0.{n}, 203.0.113.66"},
            )
        ).status
        for n in range(6)
    ]

    assert statuses == [401, 401, 401, 429, 429, 429]


async def test_spoofing_someone_elses_address_does_not_lock_them_out(pollex: Any) -> None:
    client = await pollex(mock=True, api_key=KEY, rate_limit_per_minute=2, trust_proxy_headers=True)
    victim = "198.51.100.50"

    for n in range(5):  # the attacker writes the victim's address; the proxy appends its own
        await client.get(
            "/api/models",
            headers={"X-API-Key": f"guess{n}", "X-Forwarded-For": f"{victim}, 203.0.113.66"},
        )
    resp = await client.get("/api/models", headers={"X-API-Key": "typo", "X-Forwarded-For": victim})

    assert resp.status == 401  # the victim's own window is untouched: not 429


async def test_proxy_headers_from_an_untrusted_peer_are_ignored(pollex: Any) -> None:
    client = await pollex(
        mock=True, rate_limit_per_minute=2, trust_proxy_headers=True, trusted_proxies=("10.9.9.9",)
    )

    statuses = [
        (
            await client.post(
                "/api/polish", json={"text": "x"}, headers={"CF-Connecting-IP": f"198.51.100.{n}"}
            )
        ).status
        for n in range(3)
    ]

    assert statuses == [200, 200, 429]  # 127.0.0.1 is not a trusted proxy here


async def test_model_listings_are_not_rate_limited(pollex: Any) -> None:
    """A plugin that lists models must not use up a single user's 10 requests a minute."""
    client = await pollex(mock=True, rate_limit_per_minute=1)

    listings = [
        (await client.get(path)).status
        for path in ("/api/models", "/v1/models", "/v1/models/mock") * 3
    ]
    first = await client.post("/api/polish", json={"text": "x"})
    second = await client.post("/api/polish", json={"text": "x"})

    assert 429 not in listings
    assert (first.status, second.status) == (200, 429)
