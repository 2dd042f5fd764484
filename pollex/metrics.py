"""Prometheus metrics (design §3), on a registry of their own per app.

A registry per app, not the process-global default, so that every `create_app()` (one
per test) starts from zero and none fails on duplicated series.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pollex import __version__

DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)
INPUT_BUCKETS = (50, 100, 250, 500, 1000, 2500, 5000, 10000)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "pollex_requests", "HTTP requests answered", ["method", "route", "status"], registry=r
        )
        self.polish_duration = Histogram(
            "pollex_polish_duration_seconds",
            "Whole polish, request to last token",
            ["model"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "pollex_time_to_first_token_seconds",
            "Request to first token sent",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.input_chars = Histogram(
            "pollex_input_chars", "Characters of text submitted", buckets=INPUT_BUCKETS, registry=r
        )
        self.adapter_available = Gauge(
            "pollex_adapter_available",
            "1 when the adapter's last probe or request succeeded",
            ["adapter", "provider"],
            registry=r,
        )
        self.failovers = Counter(
            "pollex_failovers",
            "Requests moved on from one adapter to the next",
            ["from_adapter", "to_adapter"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "pollex_upstream_errors", "Upstream failures", ["adapter", "kind"], registry=r
        )
        self.streams_in_flight = Gauge(
            "pollex_streams_in_flight", "SSE polish streams open now", registry=r
        )
        self.build_info = Gauge(
            "pollex_build_info", "Always 1; the version is a label", ["version"], registry=r
        )
        self.build_info.labels(version=__version__).set(1)
