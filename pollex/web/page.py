"""`GET /`: the polish page for people, and its assets.

Plain files shipped in the package (`pollex/web/static/`): no build step, nothing fetched
from the internet (the Nano may be offline). They hold no data, so they are served
without the API key and outside the rate limit (`guard.EXEMPT_PATHS` lists `PAGE_PATHS`);
the page asks for a key when `/api/*` answers 401. Every answer carries a strict
Content-Security-Policy (no inline script or style, requests to this origin only, no
framing), `nosniff` and `no-referrer`. The files are read once, when the app is built,
and revalidated by browsers with their ETag.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import web

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
# path -> (file in static/, Content-Type). The browser asks for /favicon.ico by itself.
FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/static/page.css": ("page.css", "text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
    "/favicon.ico": ("favicon.svg", "image/svg+xml"),
}
PAGE_PATHS = frozenset(FILES)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_routes(app: web.Application) -> None:
    static = resources.files("pollex") / "web" / "static"
    for path, (name, content_type) in FILES.items():
        app.router.add_get(path, _serve((static / name).read_bytes(), content_type))


def _serve(body: bytes, content_type: str) -> Handler:
    etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
    headers = {**SECURITY_HEADERS, "Content-Type": content_type, "ETag": etag}

    async def serve(request: web.Request) -> web.StreamResponse:
        if etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, headers=headers)

    return serve
