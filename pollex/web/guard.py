"""Who may ask: the API key check and the per-client rate limit (docs/architecture.md).

Order: auth, then rate limit. A request with a valid key is never limited; one refused
for a missing or wrong key still counts against its client's window, so guessing keys
ends in 429. Health, metrics and CORS preflights are exempt from both.
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from aiohttp import web

from pollex.web.page import PAGE_PATHS

EXEMPT_PATHS = frozenset({"/api/health", "/health", "/metrics"})
WINDOW_S = 60.0
# At most this many clients are remembered (each at most `limit` timestamps): with the
# default limit of 10 that is about 4096 x 0.9 KB = 4 MB in the worst case. Past it the
# client seen longest ago is forgotten first.
MAX_CLIENTS = 4096


def is_exempt(request: web.BaseRequest) -> bool:
    path = request.path
    return request.method == "OPTIONS" or path in EXEMPT_PATHS or path in PAGE_PATHS


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


def client_ip(request: web.BaseRequest, trust_proxy_headers: bool) -> str:
    if trust_proxy_headers:
        forwarded = request.headers.get("CF-Connecting-IP", "").strip()
        if forwarded:
            return forwarded
        hops = request.headers.get("X-Forwarded-For", "")
        first = hops.split(",", 1)[0].strip()
        if first:
            return first
    return request.remote or "unknown"


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
