"""What real clients tripped on (issue 11, part 3): the server side.

The official SDK sends `role: "developer"`, retrieves a model by id, and reads `code` as a
string; an SSE client of `/api/polish` must get a real HTTP error when nothing can serve.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import openai
import pytest
from fakes import closed_port_url
from helpers import GPU, sdk
from openai.types.chat import ChatCompletionMessageParam

from pollex.adapters.mock import tidy

USER: ChatCompletionMessageParam = {"role": "user", "content": "i goes to store yesterday"}
FRENCH: ChatCompletionMessageParam = {"role": "developer", "content": "Answer in French."}
TERSE: ChatCompletionMessageParam = {"role": "developer", "content": "Be terse."}


# --- role: "developer" ----------------------------------------------------------------------


async def test_developer_role_is_a_system_message(pollex: Any, ollama: Any) -> None:
    client = await pollex(ollama_url=ollama.url)

    async with sdk(client) as api:
        chat = await api.chat.completions.create(model="pollex:chat", messages=[FRENCH, USER])
        polish = await api.chat.completions.create(model="pollex", messages=[TERSE, USER])

    assert chat.choices[0].message.content
    assert polish.choices[0].message.content
    sent = ollama.fake.requests[0]["messages"]
    assert sent[0] == {"role": "system", "content": "Answer in French."}
    assert sent[1] == USER


# --- GET /v1/models/{id} --------------------------------------------------------------------


async def test_sdk_retrieves_a_model_by_id(pollex: Any, llama: Any) -> None:
    client = await pollex(llamacpp_url=llama.url, llamacpp_model=GPU)

    async with sdk(client) as api:
        listed = [m async for m in api.models.list()]
        retrieved = [await api.models.retrieve(m.id) for m in listed]
        alias = await api.models.retrieve("pollex:polish")

    assert [m.id for m in listed] == ["pollex", "pollex:chat", GPU]
    assert retrieved == listed
    assert (alias.id, alias.object, alias.owned_by) == ("pollex:polish", "model", "pollex")


async def test_sdk_retrieving_an_unknown_model_is_model_not_found(pollex: Any) -> None:
    client = await pollex(mock=True)

    async with sdk(client) as api:
        with pytest.raises(openai.NotFoundError) as raised:
            await api.models.retrieve("gpt-4o")

    assert raised.value.code == "model_not_found"
    assert raised.value.type == "invalid_request_error"
    assert raised.value.message == "Error code: 404 - unknown model: gpt-4o"


# --- /v1 error bodies: `code` is a string or null -------------------------------------------


async def test_error_codes_are_strings_or_null(pollex: Any) -> None:
    keyed = await pollex(mock=True, api_key="k", rate_limit_per_minute=1)
    down = await pollex(llamacpp_url=closed_port_url())
    completion = {"messages": [USER]}

    wrong_key = await keyed.post("/v1/chat/completions", json=completion)
    limited = await keyed.post("/v1/chat/completions", json=completion)
    unknown_model = await down.post("/v1/chat/completions", json={**completion, "model": "x"})
    invalid = await down.post("/v1/chat/completions", json={"messages": []})
    no_backend = await down.post("/v1/chat/completions", json=completion)
    no_route = await down.get("/v1/nothing-here")

    errors = [
        (r.status, (await r.json())["error"])
        for r in (wrong_key, limited, unknown_model, invalid, no_backend, no_route)
    ]
    assert [(status, e["type"], e["code"]) for status, e in errors] == [
        (401, "authentication_error", "invalid_api_key"),
        (429, "rate_limit_error", "rate_limit_exceeded"),
        (404, "invalid_request_error", "model_not_found"),
        (400, "invalid_request_error", None),
        (503, "server_error", None),
        (404, "invalid_request_error", None),
    ]


async def test_sdk_sees_string_codes(pollex: Any) -> None:
    client = await pollex(mock=True, api_key="k", rate_limit_per_minute=1)

    async with sdk(client, api_key="wrong") as api:
        with pytest.raises(openai.AuthenticationError) as unauthorized:
            await api.chat.completions.create(model="pollex", messages=[USER])
        with pytest.raises(openai.RateLimitError) as limited:
            await api.chat.completions.create(model="pollex", messages=[USER])

    assert unauthorized.value.code == "invalid_api_key"
    assert limited.value.code == "rate_limit_exceeded"


async def test_mid_stream_error_code_is_null(pollex: Any, ollama: Any) -> None:
    ollama.fake.mid_stream_error = True
    client = await pollex(ollama_url=ollama.url)

    async with sdk(client) as api:
        stream = await api.chat.completions.create(model="pollex", messages=[USER], stream=True)
        with pytest.raises(openai.APIError) as raised:
            async for _ in stream:
                pass

    assert raised.value.body == {
        "message": "ollama reported an error",
        "type": "server_error",
        "code": None,
    }


# --- /api/polish: a quick failure is a real HTTP error, in both forms -----------------------


@pytest.mark.parametrize("stream", [True, False])
async def test_no_backend_is_a_503_with_retry_after(pollex: Any, stream: bool) -> None:
    client = await pollex(llamacpp_url=closed_port_url(), probe_interval_s=3.2)

    resp = await client.post("/api/polish", json={"text": "i goes home", "stream": stream})

    assert resp.status == 503
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.headers["Retry-After"] == "4"  # the probe interval, rounded up
    body = await resp.json()
    assert body["error"].startswith("no backend could serve the request")


async def test_sse_headers_wait_for_the_first_event(pollex: Any) -> None:
    """A stream that serves still starts with `start` and streams every delta."""
    client = await pollex(mock=True)

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            client.make_url("/api/polish"), json={"text": "i goes home", "stream": True}
        ) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        body = (await resp.read()).decode()

    assert body.startswith("event: start\n")
    assert body.count("event: delta\n") == len(tidy("i goes home").split())
    assert body.endswith("\n\n") and "event: done\n" in body
