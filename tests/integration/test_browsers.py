"""What a web page can make a browser do with pollex: CSRF, DNS rebinding, CORS (issue 9,
item 8)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pollex.web.keys import METRICS

KEY = "browser-test-key"
ORIGIN = "https://editor.example"


# --- POST bodies must be JSON: a "simple" cross-site POST cannot run a polish ------------


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
async def test_a_post_that_is_not_json_is_415_and_runs_nothing(
    pollex: Any, content_type: str | None
) -> None:
    client = await pollex(mock=True)
    headers = {} if content_type is None else {"Content-Type": content_type}

    resp = await client.post("/api/polish", data=b'{"text": "i goes home"}', headers=headers)

    assert resp.status == 415
    assert await resp.json() == {"error": "Content-Type must be application/json"}
    assert client.app[METRICS].input_chars._sum.get() == 0  # no polish started


async def test_the_openai_facade_refuses_it_in_its_own_shape(pollex: Any) -> None:
    client = await pollex(mock=True)

    resp = await client.post(
        "/v1/chat/completions",
        data=b'{"messages": [{"role": "user", "content": "hi"}]}',
        headers={"Content-Type": "text/plain"},
    )

    assert resp.status == 415
    assert (await resp.json())["error"]["message"] == "Content-Type must be application/json"


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "application/x+json"]
)
async def test_json_content_types_are_accepted(pollex: Any, content_type: str) -> None:
    client = await pollex(mock=True)

    resp = await client.post(
        "/api/polish", data=b'{"text": "i goes home"}', headers={"Content-Type": content_type}
    )

    assert resp.status == 200


async def test_415_comes_before_auth_and_is_not_counted(pollex: Any) -> None:
    client = await pollex(mock=True, api_key=KEY, rate_limit_per_minute=1)

    statuses = [
        (
            await client.post("/api/polish", data=b"{}", headers={"Content-Type": "text/plain"})
        ).status
        for _ in range(3)
    ]

    assert statuses == [415, 415, 415]


# --- DNS rebinding: without an API key, only loopback names and allowed_hosts -----------


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8090", "localhost.evil.example"])
async def test_a_foreign_host_without_api_key_is_403(pollex: Any, host: str) -> None:
    client = await pollex(mock=True)

    models = await client.get("/api/models", headers={"Host": host})
    polish = await client.post("/api/polish", json={"text": "x"}, headers={"Host": host})

    assert (models.status, polish.status) == (403, 403)
    assert (await models.json())["error"].startswith("this Host is not allowed")


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:8090", "127.0.0.1", "127.0.0.1:1", "[::1]", "[::1]:8090"]
)
async def test_loopback_names_are_allowed(pollex: Any, host: str) -> None:
    client = await pollex(mock=True)

    assert (await client.get("/api/models", headers={"Host": host})).status == 200


async def test_allowed_hosts_with_or_without_port(pollex: Any) -> None:
    client = await pollex(mock=True, allowed_hosts=("nano.local", "pollex.example:443"))

    async def status(host: str) -> int:
        return (await client.get("/api/models", headers={"Host": host})).status

    assert await status("nano.local") == 200
    assert await status("NANO.local:8090") == 200
    assert await status("pollex.example:443") == 200
    assert await status("pollex.example:8443") == 403


async def test_with_an_api_key_any_host_may_ask(pollex: Any) -> None:
    client = await pollex(mock=True, api_key=KEY)

    resp = await client.get("/api/models", headers={"Host": "nano.example", "X-API-Key": KEY})

    assert resp.status == 200


@pytest.mark.parametrize("path", ["/api/health", "/health", "/metrics"])
async def test_health_and_metrics_answer_any_host(pollex: Any, path: str) -> None:
    """Like the API key, the Host check guards the API, not the monitoring endpoints."""
    client = await pollex(mock=True)

    assert (await client.get(path, headers={"Host": "nano.lan:8090"})).status == 200


# --- CORS -------------------------------------------------------------------------------


async def test_cors_is_off_by_default(pollex: Any) -> None:
    client = await pollex(mock=True)

    answer = await client.get("/api/models", headers={"Origin": ORIGIN})
    preflight = await client.options(
        "/api/polish",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
    )

    assert answer.status == 200 and preflight.status == 204
    for resp in (answer, preflight):
        assert not [h for h in resp.headers if h.lower().startswith("access-control-")]
        assert "Vary" not in resp.headers


async def test_a_listed_origin_is_echoed(pollex: Any) -> None:
    client = await pollex(mock=True, cors_origin=(ORIGIN, "chrome-extension://abcdef"))

    listed = await client.get("/api/models", headers={"Origin": ORIGIN})
    extension = await client.get("/api/models", headers={"Origin": "chrome-extension://abcdef"})
    other = await client.get("/api/models", headers={"Origin": "https://evil.example"})

    assert listed.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert listed.headers["Access-Control-Expose-Headers"] == "X-Request-ID, Retry-After"
    assert extension.headers["Access-Control-Allow-Origin"] == "chrome-extension://abcdef"
    assert "Access-Control-Allow-Origin" not in other.headers
    assert {r.headers["Vary"] for r in (listed, extension, other)} == {"Origin"}


async def test_star_allows_any_origin(pollex: Any) -> None:
    client = await pollex(mock=True, cors_origin=("*",))

    resp = await client.get("/api/models", headers={"Origin": "https://anywhere.example"})

    assert resp.headers["Access-Control-Allow-Origin"] == "*"


async def test_preflight_allows_the_headers_the_sdk_asks_for(pollex: Any) -> None:
    """The OpenAI JS SDK's preflight: its own x-stainless-* headers, besides auth."""
    client = await pollex(mock=True, api_key=KEY, rate_limit_per_minute=1, cors_origin=(ORIGIN,))
    asked = "authorization,content-type,x-stainless-arch,x-stainless-lang,x-stainless-os"

    answers = [
        await client.options(
            "/v1/chat/completions",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": asked,
            },
        )
        for _ in range(3)
    ]

    assert [r.status for r in answers] == [204] * 3  # no key, never rate-limited
    headers = answers[0].headers
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert headers["Access-Control-Allow-Methods"] == "GET, POST, OPTIONS"
    assert headers["Access-Control-Allow-Headers"] == asked
    assert int(headers["Access-Control-Max-Age"]) > 0


async def test_preflight_for_an_unlisted_origin_allows_nothing(pollex: Any) -> None:
    client = await pollex(mock=True, cors_origin=(ORIGIN,))

    resp = await client.options(
        "/api/polish",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )

    assert resp.status == 204
    assert not [h for h in resp.headers if h.lower().startswith("access-control-")]


async def test_preflights_are_counted_under_their_route(pollex: Any) -> None:
    client = await pollex(mock=True, cors_origin=(ORIGIN,))
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}

    for path in ("/api/models", "/api/polish", "/v1/models", "/v1/chat/completions", "/nope"):
        assert (await client.options(path, headers=preflight)).status == 204
    text = await (await client.get("/metrics")).text()

    routes = {
        sample.labels["route"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "pollex_requests_total" and sample.labels["method"] == "OPTIONS"
    }
    assert routes == {
        "/api/models",
        "/api/polish",
        "/v1/models",
        "/v1/chat/completions",
        "unmatched",
    }
