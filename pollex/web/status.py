"""What pollex knows about itself, answered from memory: models, health, metrics."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pollex import __version__
from pollex.web.keys import AVAILABILITY, BACKENDS, METRICS


async def models(request: web.Request) -> web.Response:
    availability = request.config_dict[AVAILABILITY]
    return web.json_response(
        [
            {
                "id": a.id,
                "name": a.name,
                "provider": a.provider,
                "available": availability.is_routable(a.id),
            }
            for a in request.config_dict[BACKENDS].listed()
        ]
    )


async def health(request: web.Request) -> web.Response:
    """Never probes: the availability cache answers (docs/architecture.md, Availability)."""
    availability = request.config_dict[AVAILABILITY]
    backends = request.config_dict[BACKENDS]
    adapters = {a.id: availability.state(a.id).as_health(a.provider) for a in backends.listed()}
    if availability.is_routable(backends.chain[0].id):
        status = "ok"
    elif any(availability.is_routable(a.id) for a in backends.chain):
        status = "degraded"
    else:
        status = "down"
    body = {"status": status, "version": __version__, "adapters": adapters}
    return web.json_response(body, status=503 if status == "down" else 200)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.config_dict[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
