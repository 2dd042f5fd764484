"""Who may ask: the Host check, the API key check and the per-client rate limit
(docs/architecture.md).

Order: Host (only without an API key), then auth, then rate limit. A request with a valid
key is never limited; one refused for a missing or wrong key still counts against its
client's window, so guessing keys ends in 429. Health, metrics and CORS preflights are
exempt from all three; model listings need the key but are not counted when they have it
(or when no key is configured), so a plugin that lists models does not use up a user's
budget, and guessing keys on them still ends in 429.
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from aiohttp import web

from pollex.web.page import PAGE_PATHS

EXEMPT_PATHS = frozenset({"/api/health", "/health", "/metrics"})
LISTING_PATHS = frozenset({"/api/models", "/v1/models"})
# Names a page cannot rebind: the browser resolves them to this machine itself.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
WINDOW_S = 60.0
# At most this many clients are remembered (each at most `limit` timestamps): with the
# default limit of 10 that is about 4096 x 0.9 KB = 4 MB in the worst case. Past it the
# client seen longest ago is forgotten first.
MAX_CLIENTS = 4096


def is_exempt(request: web.BaseRequest) -> bool:
    path = request.path
    return request.method == "OPTIONS" or path in EXEMPT_PATHS or path in PAGE_PATHS


def is_listing(request: web.BaseRequest) -> bool:
    """`GET /api/models`, `/v1/models`, `/v1/models/{id}`: not counted by the rate limit."""
    path = request.path
    return request.method in ("GET", "HEAD") and (
        path in LISTING_PATHS or path.startswith("/v1/models/")
    )


def host_is_allowed(host: str | None, allowed_hosts: tuple[str, ...]) -> bool:
    """Whether a request with this `Host` may be answered without an API key.

    DNS rebinding: a web page can point its own name at 127.0.0.1 and then call pollex
    as its same origin, with the page's name in `Host`. Loopback names and the configured
    `allowed_hosts` (name, or name:port) are fine; so is no `Host` at all, which no
    browser sends.
    """
    if host is None:
        return True
    host = host.strip().lower()
    name = host_name(host)
    return name in LOOPBACK_HOSTS or name in allowed_hosts or host in allowed_hosts


def host_name(host: str) -> str:
    """`Host` without its port: `localhost:8090` -> `localhost`, `[::1]:8090` -> `[::1]`.

    Anything that is not name[:digits] is returned whole, so it matches nothing listed.
    """
    if host.startswith("["):
        name, bracket, rest = host.partition("]")
        if bracket and (not rest or (rest[0] == ":" and rest[1:].isdigit())):
            return name + bracket
        return host
    name, _, port = host.rpartition(":")
    return name if name and port.isdigit() else host


def presented_key(request: web.BaseRequest) -> str | None:
    key = request.headers.get("X-API-Key")
    if key:
        return key
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def key_is_valid(presented: str, expected: str) -> bool:
    """Constant-time comparison, so response timing says nothing about the key.

    Header values that are not UTF-8 arrive with surrogate escapes; they compare unequal
    instead of failing to encode.
    """
    return hmac.compare_digest(
        presented.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


class SlidingWindowLimiter:
    """At most `limit` requests per client in any `window_s` seconds.

    Each client keeps the times of its recent requests, newest last; clients are kept in
    least-recently-seen order, so forgetting idle ones is popping from the front.
    """

    def __init__(
        self,
        limit: int,
        window_s: float = WINDOW_S,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_clients = max_clients
        self._clock = clock
        self._clients: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._clients)

    def hit(self, client: str) -> float | None:
        """Count one request; None when allowed, else seconds until the next one is."""
        now = self._clock()
        self._forget_idle(now)
        times = self._clients.get(client)
        if times is None:
            if len(self._clients) >= self.max_clients:
                self._clients.popitem(last=False)
            times = self._clients[client] = deque(maxlen=self.limit)
        else:
            self._clients.move_to_end(client)
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if len(times) >= self.limit:
            return max(times[0] + self.window_s - now, 0.001)
        times.append(now)
        return None

    def _forget_idle(self, now: float) -> None:
        horizon = now - self.window_s
        while self._clients:
            oldest = next(iter(self._clients.values()))
            if oldest and oldest[-1] > horizon:
                return
            self._clients.popitem(last=False)
