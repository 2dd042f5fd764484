"""/api/health from the cache, /metrics parsed as Prometheus text, headers on every route."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fakes import closed_port_url
from helpers import CPU, GPU, eventually, metric_values, polish

from pollex.web.keys import CONFIG


async def scrape(client: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    return metric_values(await resp.text())


@pytest.mark.parametrize(
    ("llama_state", "ollama_state", "status", "code"),
    [
        ("ready", "ok", "ok", 200),
        ("loading", "ok", "degraded", 200),
        ("loading", "hang", "down", 503),
    ],
)
async def test_health_status_codes(
    llama: Any,
    ollama: Any,
    pollex: Any,
    llama_state: str,
    ollama_state: str,
    status: str,
    code: int,
) -> None:
    llama.fake.health = llama_state
    ollama.fake.state = ollama_state
    client = await pollex(
        llamacpp_url=llama.url, llamacpp_model=GPU, ollama_url=ollama.url, probe_timeout_s=0.05
    )
    await eventually(lambda: llama.fake.probes >= 2 and ollama.fake.probes >= 2)

    resp = await client.get("/api/health")
    alias = await client.get("/health")

    body = await resp.json()
    assert (resp.status, body["status"]) == (code, status)
    assert alias.status == code
    assert body["version"] == "1.0.0"
    assert list(body["adapters"]) == [GPU, CPU]
    gpu = body["adapters"][GPU]
    assert gpu["provider"] == "llamacpp"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", gpu["checked_at"])
    # One host each, named host:port, with the same state; one slot each by default (the
    # fake llama-server has no /props), none busy, nobody waiting.
    llama_host = llama.url.removeprefix("http://")
    assert list(gpu["hosts"]) == [llama_host]
    assert list(body["adapters"][CPU]["hosts"]) == [ollama.url.removeprefix("http://")]
    for entry in body["adapters"].values():
        assert (entry["slots"], entry["busy_slots"], entry["queued"]) == (1, 0, 0)
        (host,) = entry["hosts"].values()
        assert {k: v for k, v in entry.items() if k not in ("provider", "hosts")} == host
    if llama_state == "loading":
        assert gpu["reason"] == "llama-server loading model"
        assert gpu["hosts"][llama_host]["available"] is False
    if ollama_state == "hang":
        assert body["adapters"][CPU]["reason"] == "probe timed out"


async def test_not_probed_yet_is_routable_and_said(llama: Any, pollex: Any) -> None:
    llama.fake.health = "hang"
    client = await pollex(llamacpp_url=llama.url, probe_timeout_s=5)

    body = await (await client.get("/api/health")).json()

    assert body["status"] == "ok"
    state = {
        "available": True,
        "reason": "not probed yet",
        "slots": 1,  # not told otherwise yet: llama-server's default
        "busy_slots": 0,
        "queued": 0,
    }
    host = llama.url.removeprefix("http://")
    assert body["adapters"]["llama.cpp"] == {
        **state,
        "provider": "llamacpp",
        "hosts": {host: state},
    }


async def test_models_in_chain_order(llama: Any, ollama: Any, pollex: Any) -> None:
    llama.fake.health = "loading"
    client = await pollex(
        llamacpp_url=llama.url, llamacpp_model=GPU, ollama_url=ollama.url, mock=True
    )
    await eventually(lambda: llama.fake.probes >= 1)

    body = await (await client.get("/api/models")).json()

    assert body == [
        {"id": GPU, "name": f"llama.cpp ({GPU})", "provider": "llamacpp", "available": False},
        {"id": CPU, "name": f"Ollama ({CPU})", "provider": "ollama", "available": True},
        {"id": "mock", "name": "Mock", "provider": "mock", "available": True},
    ]


async def test_metrics_follow_a_failover(ollama: Any, pollex: Any) -> None:
    client = await pollex(llamacpp_url=closed_port_url(), llamacpp_model=GPU, ollama_url=ollama.url)
    await eventually(lambda: ollama.fake.probes >= 1)
    before = await scrape(client)
    assert before[("pollex_build_info", (("version", "1.0.0"),))] == 1
    # The counters alerts use are there at 0 from the start; no `_created` series.
    for name in ("pollex_failovers_total", "pollex_spills_total"):
        for source, target in ((GPU, CPU), (CPU, GPU)):
            labels = (("from_adapter", source), ("to_adapter", target))
            assert before[(name, labels)] == 0
    assert before[("pollex_upstream_errors_total", (("adapter", GPU), ("kind", "connect")))] == 0
    assert not [name for name, _ in before if name.endswith("_created")]

    await polish(client)
    sse = await client.post("/api/polish", json={"text": "x", "stream": True})
    assert b"event: done" in await sse.read()
    after = await scrape(client)

    def value(name: str, **labels: str) -> float:
        return after.get((name, tuple(sorted(labels.items()))), 0.0)

    def available(adapter: str, provider: str, url: str) -> float:
        labels = {"adapter": adapter, "provider": provider, "upstream": url.split("//")[1]}
        return after[("pollex_adapter_available", tuple(sorted(labels.items())))]

    assert available(GPU, "llamacpp", client.app[CONFIG].llamacpp_url[0]) == 0
    assert available(CPU, "ollama", ollama.url) == 1
    assert value("pollex_failovers_total", from_adapter=GPU, to_adapter=CPU) == 2
    assert value("pollex_spills_total", from_adapter=GPU, to_adapter=CPU) == 0
    assert value("pollex_requests_total", method="POST", route="/api/polish", status="200") == 2
    assert value("pollex_requests_total", method="GET", route="/metrics", status="200") == 1
    assert value("pollex_polish_duration_seconds_count", model=CPU) == 2
    assert value("pollex_time_to_first_token_seconds_count", model=CPU) == 2
    assert value("pollex_input_chars_count") == 2
    assert value("pollex_streams_in_flight") == 0


async def test_upstream_errors_are_counted_by_kind(llama: Any, ollama: Any, pollex: Any) -> None:
    llama.fake.chat = "error500"
    client = await pollex(llamacpp_url=llama.url, llamacpp_model=GPU, ollama_url=ollama.url)

    await polish(client)
    metrics = await scrape(client)

    key = ("pollex_upstream_errors_total", (("adapter", GPU), ("kind", "status")))
    assert metrics[key] == 1


async def test_route_label_is_the_template_not_the_path(pollex: Any) -> None:
    client = await pollex(mock=True)

    await client.get("/no/such/path/12345")
    metrics = await scrape(client)

    labels = {dict(k[1]).get("route") for k in metrics if k[0] == "pollex_requests_total"}
    assert labels == {"unmatched"}


async def test_request_id_cors_and_json_errors(pollex: Any) -> None:
    client = await pollex(mock=True, cors_origin=("https://example.org",))
    given = "0123456789abcdef0123456789abcdef"

    not_found = await client.get("/nope")
    wrong_method = await client.delete("/api/polish", headers={"X-Request-ID": given})
    preflight = await client.options(
        "/api/polish",
        headers={"Origin": "https://example.org", "Access-Control-Request-Method": "POST"},
    )
    invalid_id = await client.get("/health", headers={"X-Request-ID": "not-hex"})

    assert (not_found.status, await not_found.json()) == (404, {"error": "not found"})
    assert (wrong_method.status, await wrong_method.json()) == (
        405,
        {"error": "method not allowed"},
    )
    assert wrong_method.headers["X-Request-ID"] == given
    assert "POST" in wrong_method.headers["Allow"]
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://example.org"
    assert preflight.headers["Access-Control-Allow-Methods"] == "GET, POST, OPTIONS"
    assert preflight.headers["Access-Control-Allow-Headers"] == (
        "Content-Type, X-API-Key, Authorization"
    )
    assert re.fullmatch(r"[0-9a-f]{32}", invalid_id.headers["X-Request-ID"])
    assert invalid_id.headers["X-Request-ID"] != "not-hex"
