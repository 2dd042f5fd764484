"""The monitoring files against each other and against the contract, without a server:
scrape targets, the names and labels the alerts and the dashboard use (design.md §3 for
pollex, the captured /metrics of llama-server --metrics), the dashboard's JSON and PromQL,
and the Grafana provisioning that points at what install-pollex.sh installs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .monitoring_kit import (
    GRAFANA_VARIABLES,
    LLAMA_B5050_ONLY,
    POLLEX_METRICS,
    PROVISIONING,
    REPO,
    TARGET_LABELS,
    alert_rules,
    all_expressions,
    contract_labels,
    dashboard,
    dashboard_expressions,
    dashboard_panels,
    llama_server_metric_names,
    promtool,
    selectors,
    series_names,
    uses_of_all,
)

PROMETHEUS_YML = REPO / "jetson" / "monitoring" / "prometheus.yml"
INSTALL_SCRIPT = REPO / "jetson" / "install-pollex.sh"
PROMETHEUS_OWN = {"up"}  # series Prometheus makes for each target

EXPRESSIONS = all_expressions()


def scrape_configs() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    return {job["job_name"]: job for job in config["scrape_configs"]}


def installed_monitoring_dir() -> str:
    m = re.search(
        r'^MONITORING_DIR="\$\{MONITORING_DIR:-(/[^}]+)\}"', INSTALL_SCRIPT.read_text(), re.M
    )
    assert m, "install-pollex.sh sets no MONITORING_DIR default"
    return m.group(1)


# --------------------------------------------------------------------- prometheus.yml


def test_prometheus_scrapes_pollex_and_llama_server_on_loopback_with_a_host_label() -> None:
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = scrape_configs()
    assert set(jobs) == {"pollex", "llama-server"}
    for job, target in (("pollex", "127.0.0.1:8090"), ("llama-server", "127.0.0.1:8080")):
        assert jobs[job].get("metrics_path", "/metrics") == "/metrics"
        (static,) = jobs[job]["static_configs"]
        assert static["targets"] == [target]
        assert static["labels"]["host"], job


def test_the_jobs_the_rules_select_are_scraped() -> None:
    jobs = scrape_configs()
    for name, expr in EXPRESSIONS.items():
        for selector in selectors(expr).selectors:
            for m in selector.matchers:
                if m.label == "job":
                    assert m.op == "=" and m.value in jobs, f"{name}: job {m.value!r}"


# --------------------------------------------------------------------- names and labels


def test_pollex_contract_series_names() -> None:
    # the table of design.md §3, with the series a histogram adds
    names = series_names()
    assert names["pollex_polish_duration_seconds_bucket"] == "pollex_polish_duration_seconds"
    assert contract_labels("pollex_polish_duration_seconds_bucket") == {"model", "le"}
    assert contract_labels("pollex_polish_duration_seconds_count") == {"model"}
    assert len(POLLEX_METRICS) == 12 and len(names) == 8 + 4 * 3  # 4 histograms


def test_llama_server_names_come_from_the_capture() -> None:
    names = llama_server_metric_names()
    for name in (
        "llamacpp:predicted_tokens_seconds",
        "llamacpp:prompt_tokens_seconds",
        "llamacpp:requests_processing",
        "llamacpp:requests_deferred",
        "llamacpp:tokens_predicted_total",
        "llamacpp:prompt_tokens_total",
    ):
        assert name in names
    # The capture is of a newer llama-server; the exception list holds only what it lacks.
    assert not LLAMA_B5050_ONLY & names


@pytest.mark.parametrize("name", sorted(EXPRESSIONS))
def test_every_expression_uses_only_metrics_that_exist(name: str) -> None:
    known = set(series_names()) | llama_server_metric_names() | LLAMA_B5050_ONLY | PROMETHEUS_OWN
    uses = selectors(EXPRESSIONS[name])
    assert uses.metrics, f"{name} selects no metric"
    assert uses.metrics <= known, f"{name}: unknown {sorted(uses.metrics - known)}"
    if name.startswith("alert "):  # alerts on pollex's own names (and up)
        assert all(m.startswith("pollex_") or m in PROMETHEUS_OWN for m in uses.metrics)


@pytest.mark.parametrize("name", sorted(EXPRESSIONS))
def test_every_label_an_expression_uses_is_in_the_contract(name: str) -> None:
    uses = selectors(EXPRESSIONS[name])
    pollex = [s for s in uses.selectors if s.metric in series_names()]
    for selector in pollex:
        for m in selector.matchers:
            assert m.label in contract_labels(selector.metric) | TARGET_LABELS, (
                f"{name}: {selector.metric} has no label {m.label}"
            )
    for selector in uses.selectors:  # llama-server's series and up: the target labels only
        if selector.metric not in series_names():
            assert {m.label for m in selector.matchers} <= TARGET_LABELS | {"job"}, name
    allowed = set(TARGET_LABELS) | uses.made
    for selector in pollex:
        allowed |= contract_labels(selector.metric)
    assert uses.grouping <= allowed, f"{name}: groups by {sorted(uses.grouping - allowed)}"


# --------------------------------------------------------------------- alerts


def test_alerts_tell_whoever_is_on_call_what_to_check_first() -> None:
    for rule in alert_rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["alert"].startswith("Pollex"), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description"}, rule["alert"]
        assert "{{ $labels.host }}" in annotations["summary"], rule["alert"]
        commands = re.findall(r"`([^`]+)`", annotations["description"])
        assert any(
            re.match(r"(sudo )?(curl|journalctl|systemctl|free|ollama|jetson_clocks)", c)
            for c in commands
        ), f"{rule['alert']}: no command to run first"


def test_status_499_is_not_counted_as_an_error() -> None:
    (rule,) = [r for r in alert_rules() if r["alert"] == "PollexPolishErrors"]
    requests = [s for s in selectors(rule["expr"]).selectors if s.metric == "pollex_requests_total"]
    numerator, denominator = requests
    assert {(m.label, m.op, m.value) for m in numerator.matchers} == {
        ("route", "=", "/api/polish"),
        ("status", "=~", "5.."),
    }
    assert ("status", "!=", "499") in {(m.label, m.op, m.value) for m in denominator.matchers}
    assert not re.fullmatch("5..", "499")


# --------------------------------------------------------------------- dashboard


def test_dashboard_is_provisionable_json() -> None:
    board = dashboard()
    assert board["uid"] == "pollex-nano" and board["title"]
    assert board.get("id") is None  # Grafana assigns it; a fixed id breaks provisioning
    ids = [p["id"] for p in board["panels"]] + [
        p["id"] for row in board["panels"] for p in row.get("panels", [])
    ]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard_panels():
        assert panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_dashboard_variables_query_existing_series() -> None:
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        assert variable["name"] in GRAFANA_VARIABLES
        m = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["definition"])
        assert m, variable["definition"]
        assert m.group(1) in series_names() and m.group(2) in TARGET_LABELS
        assert variable["query"]["query"] == variable["definition"]


def test_dashboard_uses_only_its_own_variables() -> None:
    for name, expr in dashboard_expressions().items():
        used = set(re.findall(r"\$\{?([A-Za-z_]\w*)", expr))
        assert used <= set(GRAFANA_VARIABLES), f"{name}: {used}"
        if "pollex_" in expr or "llamacpp:" in expr:
            assert 'host=~"$host"' in expr, f"{name} ignores the host variable"


def test_every_dashboard_expression_parses(tmp_path: Path) -> None:
    """promtool parses each expression as the rule of a throwaway rules file."""
    names = sorted(n for n in EXPRESSIONS if n.startswith("panel "))
    rules = [{"record": f"dashboard:expr_{i}", "expr": EXPRESSIONS[n]} for i, n in enumerate(names)]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_dashboard_has_the_panels_the_nano_needs() -> None:
    used = set().union(*(u.metrics for n, u in uses_of_all() if n.startswith("panel ")))
    for metric in (
        "pollex_requests_total",  # request rate by route and status
        "pollex_polish_duration_seconds_bucket",  # polish time percentiles per model
        "pollex_time_to_first_token_seconds_bucket",  # TTFT percentiles per model
        "pollex_adapter_available",  # backend availability over time
        "pollex_failovers_total",
        "pollex_streams_in_flight",
        "pollex_input_chars_bucket",
        "pollex_queued_requests",
        "llamacpp:predicted_tokens_seconds",  # llama-server's tokens/s
        "llamacpp:tokens_predicted_total",
    ):
        assert metric in used, metric
    by_model = [
        u
        for n, u in uses_of_all()
        if n.startswith("panel ") and u.metrics & {"pollex_polish_duration_seconds_bucket"}
    ]
    assert all("model" in u.grouping for u in by_model)


def test_every_alerting_series_is_on_the_dashboard() -> None:
    on_dashboard = set().union(*(u.metrics for n, u in uses_of_all() if n.startswith("panel ")))
    in_alerts = set().union(*(u.metrics for n, u in uses_of_all() if n.startswith("alert ")))
    assert in_alerts <= on_dashboard, sorted(in_alerts - on_dashboard)


# --------------------------------------------------------------------- Grafana provisioning


def test_dashboard_provisioning_points_at_the_installed_dashboard() -> None:
    doc = yaml.safe_load((PROVISIONING / "dashboards" / "pollex.yml").read_text())
    (provider,) = doc["providers"]
    assert doc["apiVersion"] == 1 and provider["type"] == "file"
    assert provider["options"]["path"] == f"{installed_monitoring_dir()}/grafana/dashboards"


def test_datasource_provisioning_is_a_prometheus() -> None:
    doc = yaml.safe_load((PROVISIONING / "datasources" / "pollex.yml").read_text())
    (source,) = doc["datasources"]
    assert doc["apiVersion"] == 1 and source["type"] == "prometheus"
    assert source["url"] == "http://127.0.0.1:9090"
    interval = yaml.safe_load(PROMETHEUS_YML.read_text())["global"]["scrape_interval"]
    assert source["jsonData"]["timeInterval"] == interval
