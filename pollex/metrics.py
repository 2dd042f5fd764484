"""Prometheus metrics (README, "Metrics"), on a registry of their own per app.

A registry per app, not the process-global default, so that every `create_app()` (one
per test) starts from zero and none fails on duplicated series. No `_created` series: they
double the series count and nothing reads them. Counters that alerts use exist at zero for
every known label combination from the start, so `rate()` over a quiet pollex is 0, not
nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from pollex import __version__
from pollex.errors import ErrorKind

DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)
INPUT_BUCKETS = (50, 100, 250, 500, 1000, 2500, 5000, 10000)
QUEUE_WAIT_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]
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
            "1 when the host's last probe or request succeeded",
            ["adapter", "provider", "upstream"],
            registry=r,
        )
        self.failovers = Counter(
            "pollex_failovers",
            "Requests moved on from one backend to the next after a failure or a known outage",
            ["from_adapter", "to_adapter"],
            registry=r,
        )
        self.spills = Counter(
            "pollex_spills",
            "Requests sent past a busy backend to one that could start them sooner",
            ["from_adapter", "to_adapter"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "pollex_upstream_errors", "Upstream failures", ["adapter", "kind"], registry=r
        )
        self.streams_in_flight = Gauge(
            "pollex_streams_in_flight", "SSE polish streams open now", registry=r
        )
        self.busy_slots = Gauge(
            "pollex_busy_slots",
            "Requests a host is serving now",
            ["adapter", "upstream"],
            registry=r,
        )
        self.queued_requests = Gauge(
            "pollex_queued_requests",
            "Requests waiting in pollex for a host's slot",
            ["adapter", "upstream"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "pollex_queue_wait_seconds",
            "Time from asking for a slot to getting it",
            ["adapter"],
            buckets=QUEUE_WAIT_BUCKETS,
            registry=r,
        )
        self.build_info = Gauge(
            "pollex_build_info", "Always 1; the version is a label", ["version"], registry=r
        )
        self.build_info.labels(version=__version__).set(1)

    def know(self, backend_ids: Sequence[str]) -> None:
        """Create the counters' series for these backends at zero."""
        for source in backend_ids:
            for kind in get_args(ErrorKind):
                self.upstream_errors.labels(source, kind)
            for target in backend_ids:
                if target != source:
                    self.failovers.labels(source, target)
                    self.spills.labels(source, target)
