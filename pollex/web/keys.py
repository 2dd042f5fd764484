"""Typed keys for what the app and each request share."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from pollex.adapters import Backends
from pollex.config import Config
from pollex.metrics import Metrics
from pollex.routing.availability import Availability
from pollex.routing.capacity import Capacity
from pollex.routing.inflight import InFlight
from pollex.routing.router import Router
from pollex.web.guard import SlidingWindowLimiter

CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
SYSTEM_PROMPT = web.AppKey("system_prompt", str)
BACKENDS = web.AppKey("backends", Backends)
AVAILABILITY = web.AppKey("availability", Availability)
CAPACITY = web.AppKey("capacity", Capacity)
ROUTER = web.AppKey("router", Router)
LIMITER = web.AppKey("limiter", SlidingWindowLimiter)
IN_FLIGHT = web.AppKey("in_flight", InFlight)

# Per request: the request id, and fields the access log line adds (model, outcome, ...).
REQUEST_ID = web.RequestKey("request_id", str)
LOG_FIELDS = web.RequestKey("log_fields", dict[str, Any])
