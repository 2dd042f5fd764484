"""`GET /` and its assets over HTTP: headers, caching, no key, no rate limit. The page's
behaviour in a browser is tested in tests/browser/."""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from pollex.web.guard import is_exempt
from pollex.web.page import FILES, PAGE_PATHS

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
TYPES = {
    "/": "text/html; charset=utf-8",
    "/static/page.js": "text/javascript; charset=utf-8",
    "/static/page.css": "text/css; charset=utf-8",
    "/favicon.svg": "image/svg+xml",
    "/favicon.ico": "image/svg+xml",
}


@pytest.mark.parametrize("path", sorted(TYPES))
async def test_every_file_has_the_security_headers(pollex: Any, path: str) -> None:
    client = await pollex(mock=True)

    resp = await client.get(path)

    assert resp.status == 200
    assert resp.headers["Content-Type"] == TYPES[path]
    assert resp.headers["Content-Security-Policy"] == CSP
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert len(await resp.read()) > 100


async def test_unchanged_files_are_not_sent_again(pollex: Any) -> None:
    client = await pollex(mock=True)
    first = await client.get("/static/page.js")

    again = await client.get("/static/page.js", headers={"If-None-Match": first.headers["ETag"]})

    assert first.headers["Cache-Control"] == "no-cache"  # always asked, rarely sent
    assert again.status == 304
    assert await again.read() == b""


@pytest.mark.parametrize("path", sorted(TYPES))
async def test_the_page_needs_no_key_and_is_not_rate_limited(pollex: Any, path: str) -> None:
    client = await pollex(mock=True, api_key="k", rate_limit_per_minute=1)

    statuses = [(await client.get(path)).status for _ in range(3)]
    api = await client.get("/api/models")

    assert statuses == [200, 200, 200]
    assert api.status == 401  # the data still needs the key


@pytest.mark.parametrize("path", sorted(PAGE_PATHS))
def test_the_guard_exempts_every_page_path(path: str) -> None:
    assert set(FILES) == PAGE_PATHS
    assert is_exempt(make_mocked_request("GET", path))


def test_the_html_loads_nothing_inline_or_foreign() -> None:
    """What the CSP forbids is not in the files: a browser would refuse it."""
    static = resources.files("pollex") / "web" / "static"
    html = (static / "index.html").read_text("utf-8")
    scripts = re.findall(r"<script\b[^>]*>", html)

    assert scripts == ['<script src="/static/page.js" defer>']
    assert "<style" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers
    for text in (html, (static / "page.js").read_text("utf-8")):
        assert not re.search(r"https?://", text)
