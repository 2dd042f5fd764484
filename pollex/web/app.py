"""The application factory: routes, middleware, and the resources that live with the app."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable
from importlib import resources
from pathlib import Path

from aiohttp import web

from pollex.adapters import Backends
from pollex.adapters.providers import open_backends
from pollex.config import Config
from pollex.metrics import Metrics
from pollex.routing.availability import Availability
from pollex.routing.capacity import Capacity
from pollex.routing.inflight import InFlight
from pollex.routing.router import Router
from pollex.web import page, polish, status
from pollex.web.errors import ERROR_BODY, pollex_error_body
from pollex.web.guard import SlidingWindowLimiter
from pollex.web.keys import (
    AVAILABILITY,
    BACKENDS,
    CAPACITY,
    CONFIG,
    IN_FLIGHT,
    LIMITER,
    METRICS,
    ROUTER,
    SYSTEM_PROMPT,
)
from pollex.web.middleware import add_common_headers, guard, request_context
from pollex.web.openai import openai_app


def load_prompt(prompt_path: str) -> str:
    if prompt_path:
        return Path(prompt_path).read_text(encoding="utf-8").strip()
    return (resources.files("pollex") / "prompts" / "polish.txt").read_text("utf-8").strip()


def create_app(config: Config, backends: Backends | None = None) -> web.Application:
    """Build the app. `backends` replaces the configured adapters (tests hand in fakes)."""
    app = web.Application(
        client_max_size=config.max_body_bytes, middlewares=[request_context, guard]
    )
    app[CONFIG] = config
    app[ERROR_BODY] = pollex_error_body
    app[LIMITER] = SlidingWindowLimiter(config.rate_limit_per_minute)
    app[IN_FLIGHT] = InFlight()
    app[METRICS] = Metrics()
    app[SYSTEM_PROMPT] = load_prompt(config.prompt_path)
    app.cleanup_ctx.append(_backends(backends))
    app.cleanup_ctx.append(_prober)
    app.on_response_prepare.append(add_common_headers)
    app.router.add_post("/api/polish", polish.polish)
    app.router.add_get("/api/models", status.models)
    app.router.add_get("/api/health", status.health)
    app.router.add_get("/health", status.health)
    app.router.add_get("/metrics", status.metrics)
    app.add_subapp("/v1", openai_app())
    page.add_routes(app)
    return app


def _backends(
    given: Backends | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        async with contextlib.AsyncExitStack() as stack:
            backends = given
            if backends is None:
                backends = await stack.enter_async_context(open_backends(config))
            metrics = app[METRICS]
            metrics.know(list(backends.by_id))
            availability = Availability(
                backends.hosts(),
                metrics,
                interval_s=config.probe_interval_s,
                interval_down_s=config.probe_interval_down_s,
                probe_timeout_s=config.probe_timeout_s,
            )
            capacity = Capacity(
                list(backends.by_id.values()),
                availability,
                metrics,
                max_queue=config.max_queue,
                max_queue_wait_s=config.max_queue_wait_s,
            )
            app[BACKENDS] = backends
            app[AVAILABILITY] = availability
            app[CAPACITY] = capacity
            app[ROUTER] = Router(
                backends,
                availability,
                capacity,
                metrics,
                max_output_chars=config.max_output_chars,
                retry_after_s=max(1, math.ceil(config.probe_interval_s)),
                silent_s=config.probe_timeout_s,
            )
            yield

    return context


async def _prober(app: web.Application) -> AsyncIterator[None]:
    """The background probe task: first round at start-up, without delaying it."""
    task = asyncio.create_task(app[AVAILABILITY].run(), name="pollex-prober")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
