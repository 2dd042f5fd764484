"""What the monitoring tests share: the files of jetson/monitoring/, the metric contract of
design.md §3, llama-server's metric names, and the selectors a PromQL expression uses.

promtool parses PromQL (every expression here is also checked with it) but does not print
what an expression selects, so `selectors()` reads that from the tokens: metric names, their
label matchers, and the labels it groups or joins by. It knows PromQL's token grammar
(strings, durations, keywords, function calls), not its full syntax: promtool is the judge
of syntax.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "jetson" / "monitoring"
PROMETHEUS_YML = MONITORING / "prometheus.yml"
ALERTS_YML = MONITORING / "alerts.yml"
ALERTS_TEST_YML = MONITORING / "alerts.test.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "pollex.json"
PROVISIONING = MONITORING / "grafana" / "provisioning"
LLAMA_METRICS_CAPTURE = REPO / "tests" / "fixtures" / "llama-server" / "metrics.http"

# design.md §3, the contract: pollex's metrics, their type and labels. Some are not
# exported yet (the capacity work adds the queue metrics); the tests hold pollex to this.
POLLEX_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "pollex_requests_total": ("counter", frozenset({"method", "route", "status"})),
    "pollex_polish_duration_seconds": ("histogram", frozenset({"model"})),
    "pollex_time_to_first_token_seconds": ("histogram", frozenset({"model"})),
    "pollex_input_chars": ("histogram", frozenset()),
    "pollex_adapter_available": ("gauge", frozenset({"adapter", "provider"})),
    "pollex_failovers_total": ("counter", frozenset({"from_adapter", "to_adapter"})),
    "pollex_upstream_errors_total": ("counter", frozenset({"adapter", "kind"})),
    "pollex_streams_in_flight": ("gauge", frozenset()),
    "pollex_build_info": ("gauge", frozenset({"version"})),
    "pollex_queued_requests": ("gauge", frozenset({"adapter"})),
    "pollex_queue_wait_seconds": ("histogram", frozenset({"adapter"})),
    "pollex_busy_slots": ("gauge", frozenset({"adapter"})),
}

# Labels Prometheus itself puts on every scraped series (prometheus.yml adds `host`).
TARGET_LABELS = frozenset({"job", "instance", "host"})

# In b5050's llama-server (examples/server/server.cpp, handle_metrics) but gone from the
# newer build that made the capture: the dashboard may show them, and says so.
LLAMA_B5050_ONLY = frozenset({"llamacpp:kv_cache_usage_ratio"})

# Grafana's variables in the dashboard's expressions, and a value that PromQL accepts.
GRAFANA_VARIABLES = {"__rate_interval": "5m", "host": "nano"}


def promtool() -> str:
    """promtool's path. Missing, the test fails (as the shellcheck tests do), not skips: a CI
    machine without it would otherwise pass alerts that nobody checked. (A function, not a
    fixture: a conftest.py here would shadow tests/conftest.py, which tests import.)"""
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool not found: install it with `apt-get install -y prometheus` "
            "(Debian's package; .ci/run does)"
        )
    return found


def series_names() -> dict[str, str]:
    """Every series name pollex's contract allows, mapped to its metric."""
    names: dict[str, str] = {}
    for metric, (kind, _) in POLLEX_METRICS.items():
        suffixes = ("_bucket", "_count", "_sum") if kind == "histogram" else ("",)
        names.update({metric + suffix: metric for suffix in suffixes})
    return names


def contract_labels(series: str) -> frozenset[str]:
    """The labels the contract gives a series (`le` for a histogram's buckets)."""
    metric = series_names()[series]
    labels = POLLEX_METRICS[metric][1]
    return labels | {"le"} if series.endswith("_bucket") else labels


def llama_server_metric_names() -> set[str]:
    """The metric names in the captured /metrics answer of a real llama-server --metrics."""
    raw = LLAMA_METRICS_CAPTURE.read_bytes()
    body = raw.split(b"\n=== response", 1)[1].partition(b"\r\n\r\n")[2].decode()
    names = set()
    for line in body.splitlines():
        m = re.match(r"# (?:HELP|TYPE) (\S+)|([a-zA-Z_:][a-zA-Z0-9_:]*)[ {]", line)
        if m:
            names.add(m.group(1) or m.group(2))
    return names


# ------------------------------------------------------------------------------- files


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS_YML.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_panels() -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too; rows themselves left out."""
    out: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def dashboard_expressions() -> dict[str, str]:
    """`panel title / refId` -> the target's PromQL, Grafana's variables as written."""
    return {
        f"{panel['title']} / {target['refId']}": target["expr"]
        for panel in dashboard_panels()
        for target in panel.get("targets", [])
    }


def expand_grafana_variables(expr: str) -> str:
    """The expression as Prometheus would get it, for values of its Grafana variables."""

    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in GRAFANA_VARIABLES:
            raise ValueError(f"unknown Grafana variable ${name} in {expr!r}")
        return GRAFANA_VARIABLES[name]

    return re.sub(r"\$\{(\w+)\}|\$([A-Za-z_]\w*)", value, expr)


def all_expressions() -> dict[str, str]:
    """`alert X` / `panel / refId` -> PromQL as Prometheus evaluates it."""
    out = {f"alert {rule['alert']}": str(rule["expr"]) for rule in alert_rules()}
    for name, expr in dashboard_expressions().items():
        out[f"panel {name}"] = expand_grafana_variables(expr)
    return out


# ------------------------------------------------------------------------------- PromQL

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<duration>(?:\d+(?:ms|s|m|h|d|w|y))+)
    | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
    | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^=<>(){}\[\],@])
    """,
    re.X,
)
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
BINARY_WORDS = {"and", "or", "unless", "bool", "atan2"}
LITERALS = {"inf", "nan"}
LABEL_SETTERS = {"label_replace", "label_join"}  # their 2nd argument is a new label


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str


@dataclass
class Selector:
    metric: str
    matchers: list[Matcher] = field(default_factory=list)


@dataclass
class Uses:
    """What one expression reads: its selectors, the labels it groups or joins on, and
    the labels it makes itself (label_replace)."""

    selectors: list[Selector] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)
    made: set[str] = field(default_factory=set)

    @property
    def metrics(self) -> set[str]:
        return {s.metric for s in self.selectors}


def tokens(expr: str) -> list[tuple[str, str]]:
    out = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot read PromQL at {expr[pos : pos + 20]!r} in {expr!r}")
        kind = m.lastgroup
        assert kind is not None
        if kind != "space":
            out.append((kind, m.group()))
        pos = m.end()
    return out


def _unquote(s: str) -> str:
    if s[0] == "`":
        return s[1:-1]
    unquoted: str = json.loads('"' + s[1:-1].replace('"', '\\"').replace("\\'", "'") + '"')
    return unquoted


def selectors(expr: str) -> Uses:
    toks = tokens(expr)
    uses = Uses()
    frames: list[list[Any]] = []  # [function name or None, argument index] per open paren
    pending_function: str | None = None
    i = 0

    def label_list(start: int) -> int:
        """Labels of `( a, b )` starting at toks[start]; returns the index after `)`."""
        j = start + 1
        while toks[j][1] != ")":
            if toks[j][0] in ("ident", "string"):
                name = toks[j][1] if toks[j][0] == "ident" else _unquote(toks[j][1])
                uses.grouping.add(name)
            j += 1
        return j + 1

    def matchers(start: int, selector: Selector) -> int:
        """Matchers of `{ a="x", b=~"y" }` starting at toks[start]; index after `}`."""
        j = start + 1
        while toks[j][1] != "}":
            if toks[j][1] == ",":
                j += 1
                continue
            label, op, value = toks[j], toks[j + 1], toks[j + 2]
            if label[0] not in ("ident", "string") or value[0] != "string":
                raise ValueError(f"unexpected matcher {label[1]}{op[1]}{value[1]} in {expr!r}")
            selector.matchers.append(Matcher(label[1], op[1], _unquote(value[1])))
            j += 3
        return j + 1

    while i < len(toks):
        kind, text = toks[i]
        following = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind == "ident" and text.lower() in GROUPING:
            i = label_list(i + 1) if following == "(" else i + 1
        elif kind == "ident" and text.lower() in BINARY_WORDS:
            i += 1
        elif kind == "ident" and text.lower() == "offset":
            i += 3 if following == "-" else 2
        elif kind == "ident" and text.lower() in LITERALS:
            i += 1
        elif kind == "ident" and (following == "(" or following.lower() in ("by", "without")):
            pending_function = text  # a function, or an aggregation like `sum by (x) (...)`
            i += 1
        elif kind == "ident" or text == "{":
            selector = Selector(text if kind == "ident" else "")
            i = i + 1 if kind == "ident" else i
            if i < len(toks) and toks[i][1] == "{":
                i = matchers(i, selector)
            if not selector.metric:
                names = [m.value for m in selector.matchers if m.label == "__name__"]
                if len(names) != 1:
                    raise ValueError(f"a selector without a metric name in {expr!r}")
                selector.metric = names[0]
            uses.selectors.append(selector)
        elif text == "[":
            while toks[i][1] != "]":
                i += 1
            i += 1
        elif text == "(":
            frames.append([pending_function, 0])
            pending_function = None
            i += 1
        elif text == ")":
            frames.pop()
            i += 1
        elif text == ",":
            frames[-1][1] += 1
            i += 1
        elif kind == "string" and frames and frames[-1][0] in LABEL_SETTERS and frames[-1][1] == 1:
            uses.made.add(_unquote(text))
            i += 1
        else:
            i += 1
    return uses


def uses_of_all() -> Iterator[tuple[str, Uses]]:
    for name, expr in all_expressions().items():
        yield name, selectors(expr)
