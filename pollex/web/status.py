"""What pollex knows about itself, answered from memory: models, health, metrics."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pollex import __version__
from pollex.adapters import Backend
from pollex.web.keys import AVAILABILITY, BACKENDS, CAPACITY, METRICS, ROUTER


async def models(request: web.Request) -> web.Response:
    router = request.config_dict[ROUTER]
    return web.json_response(
        [
            {
                "id": b.id,
                "name": b.name,
                "provider": b.provider,
                "available": router.routable(b),
            }
            for b in request.config_dict[BACKENDS].listed()
        ]
    )


async def health(request: web.Request) -> web.Response:
    """Never probes: the availability cache and the slots answer.

    `ok` when every host of the chain's first backend is available, `degraded` when some
    host of the chain is, `down` (503) when none is.
    """
    app = request.config_dict
    availability = app[AVAILABILITY]
    chain = app[BACKENDS].chain
    backends = {b.id: _backend_health(request, b) for b in app[BACKENDS].listed()}
    if all(availability.is_routable(h) for h in chain[0].hosts):
        status = "ok"
    elif any(app[ROUTER].routable(b) for b in chain):
        status = "degraded"
    else:
        status = "down"
    body = {"status": status, "version": __version__, "adapters": backends}
    return web.json_response(body, status=503 if status == "down" else 200)


def _backend_health(request: web.Request, backend: Backend) -> dict[str, Any]:
    """One backend: its hosts, and for clients that read one host, the first one's state
    (or, with several, whether any serves) and the slots summed over them."""
    availability = request.config_dict[AVAILABILITY]
    capacity = request.config_dict[CAPACITY]
    hosts: dict[str, Any] = {}
    for host in backend.hosts:
        slots = capacity.of(host)
        hosts[host.host] = {
            **availability.state(host).as_health(),
            "slots": slots.limit,
            "busy_slots": slots.busy,
            "queued": slots.queued,
        }
    entries = list(hosts.values())
    live = [e for e in entries if e["available"]]
    entry = dict(live[0] if live and len(entries) > 1 else entries[0])
    limits = [e["slots"] for e in entries]
    entry.update(
        provider=backend.provider,
        slots=None if None in limits else sum(limits),
        busy_slots=sum(e["busy_slots"] for e in entries),
        queued=sum(e["queued"] for e in entries),
        hosts=hosts,
    )
    return entry


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.config_dict[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
