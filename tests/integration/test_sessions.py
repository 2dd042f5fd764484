"""Each HTTP adapter owns one ClientSession for the app's life, closed at cleanup."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from helpers import fast_config

from pollex.adapters import http
from pollex.web.app import create_app
from pollex.web.keys import BACKENDS


async def test_one_session_per_adapter_reused_and_closed(
    llama: Any, ollama: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    created: list[aiohttp.ClientSession] = []
    original = http.make_session

    def counting(*args: Any, **kwargs: Any) -> aiohttp.ClientSession:
        session = original(*args, **kwargs)
        created.append(session)
        return session

    monkeypatch.setattr("pollex.adapters.providers.make_session", counting)
    app = create_app(fast_config(llamacpp_url=llama.url, ollama_url=ollama.url))
    server = TestServer(app)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as client:
            for _ in range(3):
                async with client.post(server.make_url("/api/polish"), json={"text": "x"}) as r:
                    assert r.status == 200
            async with client.post(
                server.make_url("/api/polish"), json={"text": "x", "model_id": "qwen2.5:1.5b"}
            ) as r:
                assert r.status == 200
        hosts = [h for h in app[BACKENDS].hosts() if isinstance(h, http.HttpAdapter)]
        sessions = {h.provider: h._session for h in hosts}
        assert len(hosts) == len(app[BACKENDS].hosts()) == len(created) == 2
        assert set(map(id, created)) == set(map(id, sessions.values()))
        assert not any(s.closed for s in created)
    finally:
        await server.close()

    assert all(s.closed for s in created)
    assert len(llama.fake.requests) == 3
