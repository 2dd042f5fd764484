"""What a web page can make a browser do with pollex (issue 9, item 8): run a polish with
a "simple" cross-site POST."""

from __future__ import annotations

from typing import Any

import pytest

from pollex.web.keys import METRICS

KEY = "browser-test-key"


# --- POST bodies must be JSON: a "simple" cross-site POST cannot run a polish ------------


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
async def test_a_post_that_is_not_json_is_415_and_runs_nothing(
    pollex: Any, content_type: str | None
) -> None:
    client = await pollex(mock=True)
    headers = {} if content_type is None else {"Content-Type": content_type}

    resp = await client.post("/api/polish", data=b'{"text": "i goes home"}', headers=headers)

    assert resp.status == 415
    assert await resp.json() == {"error": "Content-Type must be application/json"}
    assert client.app[METRICS].input_chars._sum.get() == 0  # no polish started


async def test_the_openai_facade_refuses_it_in_its_own_shape(pollex: Any) -> None:
    client = await pollex(mock=True)

    resp = await client.post(
        "/v1/chat/completions",
        data=b'{"messages": [{"role": "user", "content": "hi"}]}',
        headers={"Content-Type": "text/plain"},
    )

    assert resp.status == 415
    assert (await resp.json())["error"]["message"] == "Content-Type must be application/json"


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "application/x+json"]
)
async def test_json_content_types_are_accepted(pollex: Any, content_type: str) -> None:
    client = await pollex(mock=True)

    resp = await client.post(
        "/api/polish", data=b'{"text": "i goes home"}', headers={"Content-Type": content_type}
    )

    assert resp.status == 200


async def test_415_comes_before_auth_and_is_not_counted(pollex: Any) -> None:
    client = await pollex(mock=True, api_key=KEY, rate_limit_per_minute=1)

    statuses = [
        (
            await client.post("/api/polish", data=b"{}", headers={"Content-Type": "text/plain"})
        ).status
        for _ in range(3)
    ]

    assert statuses == [415, 415, 415]
