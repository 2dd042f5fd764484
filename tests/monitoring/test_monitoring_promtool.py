"""jetson/monitoring with promtool: the config and the rules are valid, the alert unit tests
pass, and every alert has a series history that fires it and one that must not, each of
which really depends on that alert (a case for a misspelt alert name would pass forever)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .monitoring_kit import (
    ALERTS_TEST_YML,
    ALERTS_YML,
    MONITORING,
    PROMETHEUS_YML,
    alert_rules,
    promtool,
)

ALERTS = [rule["alert"] for rule in alert_rules()]


def promtool_run(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )


def unit_tests() -> list[dict[str, Any]]:
    tests: list[dict[str, Any]] = yaml.safe_load(ALERTS_TEST_YML.read_text())["tests"]
    return tests


def alerts_tested(group: dict[str, Any]) -> set[str]:
    return {case["alertname"] for case in group["alert_rule_test"]}


def fires(group: dict[str, Any]) -> bool:
    return any(case["exp_alerts"] for case in group["alert_rule_test"])


def failed_groups(result: subprocess.CompletedProcess[str]) -> set[str]:
    return set(re.findall(r"^\s*name: (.*),$", result.stdout + result.stderr, re.M))


def test_prometheus_config_is_valid() -> None:
    result = promtool_run("check", "config", PROMETHEUS_YML.name)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "SUCCESS: 1 rule files found" in out
    assert f"SUCCESS: {len(ALERTS)} rules found" in out  # check config checks alerts.yml too


def test_alert_rules_are_valid() -> None:
    result = promtool_run("check", "rules", ALERTS_YML.name)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert f"SUCCESS: {len(ALERTS)} rules found" in out


def test_alert_unit_tests_pass() -> None:
    result = promtool_run("test", "rules", ALERTS_TEST_YML.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_cases_that_fire_it_and_cases_that_must_not() -> None:
    groups = unit_tests()
    tested = set().union(*(alerts_tested(g) for g in groups))
    assert tested == set(ALERTS), "cases for alerts that do not exist, or alerts without cases"
    for group in groups:
        # One alert per group, named after it, so that a failure says which alert broke.
        (alert,) = alerts_tested(group)
        wanted = f"{alert} fires: " if fires(group) else f"{alert} must not fire: "
        assert group["name"].startswith(wanted), group["name"]
    for alert in ALERTS:
        mine = [g for g in groups if alerts_tested(g) == {alert}]
        assert any(fires(g) for g in mine), f"no case fires {alert}"
        assert any(not fires(g) for g in mine), f"no case where {alert} must not fire"
        for group in mine:
            if fires(group):  # the firing case also shows it not firing before its time
                assert any(not case["exp_alerts"] for case in group["alert_rule_test"])


@pytest.mark.parametrize("alert", ALERTS)
def test_each_case_depends_on_its_alert(tmp_path: Path, alert: str) -> None:
    """With the alert's expression replaced by one that never fires, exactly its firing
    cases fail; by one that always fires, every one of its must-not cases fails (the
    firing ones too: they also expect silence before their time, and labels)."""
    groups = [g for g in unit_tests() if alerts_tested(g) == {alert}]
    (tmp_path / "alerts.test.yml").write_text(
        yaml.safe_dump(
            {"rule_files": ["alerts.yml"], "evaluation_interval": "15s", "tests": groups}
        )
    )
    for expr, expected_failures in (
        ("vector(1) == 0", {g["name"] for g in groups if fires(g)}),
        ("vector(1)", {g["name"] for g in groups}),
    ):
        rules = yaml.safe_load(ALERTS_YML.read_text())
        for group in rules["groups"]:
            for rule in group["rules"]:
                if rule["alert"] == alert:
                    rule["expr"] = expr
        (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
        result = promtool_run("test", "rules", "alerts.test.yml", cwd=tmp_path)
        assert result.returncode != 0, f"{alert}: its cases pass with `{expr}`"
        assert failed_groups(result) == expected_failures, result.stdout + result.stderr


def test_unit_tests_use_the_evaluation_interval_of_prometheus_yml() -> None:
    interval = yaml.safe_load(PROMETHEUS_YML.read_text())["global"]["evaluation_interval"]
    assert yaml.safe_load(ALERTS_TEST_YML.read_text())["evaluation_interval"] == interval
