"""The OpenAI facade, read by the official `openai` SDK and byte by byte with aiohttp."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import openai
import pytest
from fakes import closed_port_url
from helpers import CPU, GPU, OLLAMA_TEXT, failovers, sdk, stream_until
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionUserMessageParam

from pollex.adapters.mock import tidy
from pollex.web.app import load_prompt
from pollex.web.keys import IN_FLIGHT, METRICS

CAPTURED_TEXT = "i goes to store yesterday"  # the captured llama-server stream
USER_TEXT = "i goes to store yesterday"
USER: ChatCompletionUserMessageParam = {"role": "user", "content": USER_TEXT}


async def primary_down(pollex: Any, ollama: Any, **overrides: Any) -> Any:
    return await pollex(
        llamacpp_url=closed_port_url(), llamacpp_model=GPU, ollama_url=ollama.url, **overrides
    )


def data_events(raw: bytes) -> list[bytes]:
    """The `data:` payloads of an SSE body, asserting every event is one `data:` line."""
    assert raw.endswith(b"\n\n")
    events = raw[:-2].split(b"\n\n")
    for event in events:
        assert event.startswith(b"data: ") and b"\n" not in event, event
    return [event[len(b"data: ") :] for event in events]


# --- the SDK, through the failover chain --------------------------------------------------


async def test_sdk_stream_polishes_via_fallback(pollex: Any, ollama: Any) -> None:
    client = await primary_down(pollex, ollama)

    async with sdk(client) as api:
        stream = await api.chat.completions.create(
            model="pollex",
            messages=[{"role": "system", "content": "You are a plugin."}, USER],
            stream=True,
        )
        chunks = [chunk async for chunk in stream]

    assert {(c.id, c.created, c.model) for c in chunks} == {(chunks[0].id, chunks[0].created, CPU)}
    assert chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == OLLAMA_TEXT
    assert [c.choices[0].finish_reason for c in chunks] == [None] * 8 + ["stop"]
    assert ollama.fake.requests[0]["messages"] == [
        {"role": "system", "content": load_prompt("")},
        USER,
    ]
    assert failovers(client, GPU, CPU) == 1


async def test_sdk_non_stream_chat_passthrough(pollex: Any, ollama: Any) -> None:
    client = await primary_down(pollex, ollama)
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Where did you go?"},
        {"role": "assistant", "content": "Home."},
        {"role": "user", "content": "And yesterday?"},
    ]

    async with sdk(client) as api:
        completion = await api.chat.completions.create(model="pollex:chat", messages=messages)

    assert completion.object == "chat.completion"
    assert completion.model == CPU
    choice = completion.choices[0]
    assert (choice.index, choice.message.role) == (0, "assistant")
    assert (choice.message.content, choice.finish_reason) == (OLLAMA_TEXT, "stop")
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (26, 7)
    assert completion.usage.total_tokens == 33
    assert ollama.fake.requests[0]["messages"] == messages


async def test_sdk_models_list(pollex: Any, llama: Any, ollama: Any) -> None:
    client = await pollex(llamacpp_url=llama.url, llamacpp_model=GPU, ollama_url=ollama.url)

    async with sdk(client) as api:
        models = [model async for model in api.models.list()]

    assert [m.id for m in models] == ["pollex", "pollex:chat", GPU, CPU]
    assert {(m.object, m.owned_by) for m in models} == {("model", "pollex")}


async def test_sdk_wrong_api_key_is_authentication_error(pollex: Any) -> None:
    client = await pollex(mock=True, api_key="k")

    async with sdk(client, api_key="wrong") as api:
        with pytest.raises(openai.AuthenticationError) as raised:
            await api.chat.completions.create(model="pollex", messages=[USER])
    assert raised.value.message == "Error code: 401 - invalid API key"
    assert raised.value.type == "authentication_error"

    async with sdk(client, api_key="k") as api:  # sent as `Authorization: Bearer k`
        completion = await api.chat.completions.create(model="pollex", messages=[USER])
    assert completion.choices[0].message.content == tidy(USER_TEXT)


async def test_sdk_unknown_model_is_not_found(pollex: Any) -> None:
    client = await pollex(mock=True)

    async with sdk(client) as api:
        with pytest.raises(openai.NotFoundError) as raised:
            await api.chat.completions.create(model="gpt-4o", messages=[USER], stream=True)

    assert raised.value.code == "model_not_found"
    assert raised.value.message == "Error code: 404 - unknown model: gpt-4o"


async def test_sdk_include_usage_adds_a_usage_chunk(pollex: Any, ollama: Any) -> None:
    client = await primary_down(pollex, ollama)

    async with sdk(client) as api:
        stream = await api.chat.completions.create(
            model="pollex",
            messages=[USER],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        plain = await api.chat.completions.create(model="pollex", messages=[USER], stream=True)
        without = [chunk async for chunk in plain]

    *content, finish, usage = chunks
    assert finish.choices[0].finish_reason == "stop"
    assert usage.choices == []
    assert usage.usage is not None
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens) == (26, 7)
    assert usage.usage.total_tokens == 33
    assert usage.id == content[0].id
    assert all(c.usage is None for c in without)
    assert all(c.choices for c in without)


async def test_sdk_mid_stream_error_raises_api_error(pollex: Any, ollama: Any) -> None:
    ollama.fake.mid_stream_error = True
    client = await primary_down(pollex, ollama)
    received: list[str] = []

    async with sdk(client) as api:
        stream = await api.chat.completions.create(model="pollex", messages=[USER], stream=True)
        with pytest.raises(openai.APIError) as raised:
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")

    assert "".join(received) == "I went"
    assert raised.value.message == "ollama reported an error"  # not the upstream's words
    assert raised.value.body == {
        "message": "ollama reported an error",
        "type": "server_error",
        "code": None,
    }


async def test_sdk_no_backend_is_503_before_streaming(pollex: Any) -> None:
    client = await pollex(llamacpp_url=closed_port_url(), llamacpp_model=GPU)

    async with sdk(client) as api:
        with pytest.raises(openai.InternalServerError) as raised:
            await api.chat.completions.create(model="pollex", messages=[USER], stream=True)

    assert raised.value.status_code == 503
    assert raised.value.response.headers["Retry-After"] == "1"
    assert "no backend could serve the request" in raised.value.message


async def test_backend_id_is_passthrough_pinned_first(pollex: Any, llama: Any, ollama: Any) -> None:
    client = await pollex(llamacpp_url=llama.url, llamacpp_model=GPU, ollama_url=ollama.url)

    async with sdk(client) as api:
        on_cpu = await api.chat.completions.create(model=CPU, messages=[USER])
        on_gpu = await api.chat.completions.create(model=GPU, messages=[USER])

    assert (on_cpu.model, on_cpu.choices[0].message.content) == (CPU, OLLAMA_TEXT)
    assert (on_gpu.model, on_gpu.choices[0].message.content) == (GPU, CAPTURED_TEXT)
    assert ollama.fake.requests[0]["messages"] == [USER]  # no pollex system prompt
    assert llama.fake.requests[0]["messages"] == [USER]


async def test_pinned_backend_still_fails_over(pollex: Any, ollama: Any) -> None:
    client = await primary_down(pollex, ollama)

    async with sdk(client) as api:
        completion = await api.chat.completions.create(model=GPU, messages=[USER])

    assert completion.model == CPU


# --- the wire, byte by byte ---------------------------------------------------------------


async def test_stream_wire_format(pollex: Any) -> None:
    client = await pollex(mock=True)
    body = {"model": "pollex", "stream": True, "messages": [USER]}

    resp = await client.post(
        "/v1/chat/completions", json=body, headers={"Accept-Encoding": "gzip, deflate, br"}
    )
    raw = await resp.read()

    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["X-Accel-Buffering"] == "no"
    assert "Content-Encoding" not in resp.headers
    assert raw.endswith(b"\n\ndata: [DONE]\n\n")
    payloads = data_events(raw)
    assert payloads[-1] == b"[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    first = chunks[0]
    assert list(first) == ["id", "object", "created", "model", "choices"]
    assert first["id"] == f"chatcmpl-{resp.headers['X-Request-ID']}"
    for chunk in chunks:
        assert list(chunk) == ["id", "object", "created", "model", "choices"]
        assert (chunk["id"], chunk["created"], chunk["model"]) == (
            first["id"],
            first["created"],
            "mock",
        )
        assert chunk["object"] == "chat.completion.chunk"
        [choice] = chunk["choices"]
        assert list(choice) == ["index", "delta", "finish_reason"]
        assert choice["index"] == 0
    deltas = [c["choices"][0]["delta"] for c in chunks]
    reasons = [c["choices"][0]["finish_reason"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert deltas[-1] == {}
    assert all(list(d) == ["content"] for d in deltas[1:-1])
    assert "".join(d["content"] for d in deltas[1:-1]) == tidy(USER_TEXT)
    assert reasons == [None] * (len(chunks) - 1) + ["stop"]


async def test_usage_chunk_wire_format(pollex: Any) -> None:
    client = await pollex(mock=True)
    body = {
        "model": "pollex",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [USER],
    }

    raw = await (await client.post("/v1/chat/completions", json=body)).read()

    *_, finish, usage, done = data_events(raw)
    assert json.loads(finish)["choices"][0]["finish_reason"] == "stop"
    usage_chunk = json.loads(usage)
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}
    assert done == b"[DONE]"


async def test_non_stream_wire_format(pollex: Any) -> None:
    client = await pollex(mock=True)
    body = {"model": "pollex", "messages": [USER]}

    resp = await client.post("/v1/chat/completions", json=body)
    completion = await resp.json()

    assert resp.status == 200
    assert completion == {
        "id": f"chatcmpl-{resp.headers['X-Request-ID']}",
        "object": "chat.completion",
        "created": completion["created"],
        "model": "mock",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": tidy(USER_TEXT)},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
    }


async def test_streaming_is_decided_by_the_body_only(pollex: Any) -> None:
    client = await pollex(mock=True)
    headers = {"Accept": "text/event-stream"}

    resp = await client.post("/v1/chat/completions", json={"messages": [USER]}, headers=headers)
    assert resp.headers["Content-Type"].startswith("application/json")
    assert (await resp.json())["object"] == "chat.completion"

    headers = {"Accept": "application/json"}  # Continue's FIM request does this
    body = {"messages": [USER], "stream": True}
    resp = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert resp.headers["Content-Type"] == "text/event-stream"


async def test_keep_alive_while_waiting_for_the_first_token(pollex: Any, ollama: Any) -> None:
    ollama.fake.gate = asyncio.Event()
    ollama.fake.gate_after = 0  # hold the upstream before its first line
    client = await pollex(ollama_url=ollama.url, keepalive_s=0.05)
    body = {"model": "pollex", "stream": True, "messages": [USER]}

    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status == 200  # committed once a keep-alive was due
    first = await asyncio.wait_for(resp.content.readline(), 2)
    ollama.fake.gate.set()
    rest = await resp.read()

    assert first == b": keep-alive\n"
    assert b": ping" not in rest
    assert rest.endswith(b"data: [DONE]\n\n")
    assert b'"delta":{"content":" yesterday"}' in rest


async def test_error_after_streaming_began_is_a_data_error_then_eof(
    pollex: Any, ollama: Any
) -> None:
    ollama.fake.mid_stream_error = True
    client = await pollex(ollama_url=ollama.url)
    body = {"model": "pollex", "stream": True, "messages": [USER]}

    raw = await (await client.post("/v1/chat/completions", json=body)).read()

    *chunks, last = data_events(raw)
    assert len(chunks) == 3  # role, "I", " went"
    assert json.loads(last) == {
        "error": {
            "message": "ollama reported an error",
            "type": "server_error",
            "code": None,
        }
    }


async def test_client_leaving_cancels_the_upstream(pollex: Any, llama: Any) -> None:
    llama.fake.chunk_delay = 0.2
    client = await pollex(llamacpp_url=llama.url)
    body = {"model": "pollex", "stream": True, "messages": [USER]}

    async with aiohttp.ClientSession() as session:
        url = client.make_url("/v1/chat/completions")
        resp, _ = await stream_until(session, url, body, b'"content":"')
        resp.close()  # the reader goes away mid-answer

    await asyncio.wait_for(llama.fake.cancelled.wait(), 2)
    assert llama.fake.streams_completed == 0


async def test_shutdown_ends_a_running_stream_with_an_error(pollex: Any, ollama: Any) -> None:
    ollama.fake.gate = asyncio.Event()
    client = await pollex(ollama_url=ollama.url)
    body = {"model": "pollex", "stream": True, "messages": [USER]}

    resp = await client.post("/v1/chat/completions", json=body)
    await resp.content.readuntil(b"\n\n")  # the role chunk: the answer has begun
    ended = await client.app[IN_FLIGHT].drain(grace_s=0.05, settle_s=2)
    rest = await resp.read()

    assert ended == 1
    *_, last = data_events(rest)
    assert json.loads(last)["error"] == {
        "message": "server shutting down",
        "type": "server_error",
        "code": None,
    }


async def test_no_backend_non_stream_is_openai_503(pollex: Any) -> None:
    client = await pollex(llamacpp_url=closed_port_url(), probe_interval_s=3.2)

    resp = await client.post("/v1/chat/completions", json={"messages": [USER]})

    assert resp.status == 503
    assert resp.headers["Retry-After"] == "4"
    error = (await resp.json())["error"]
    assert (error["type"], error["code"]) == ("server_error", None)


# --- the request ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "request body must be a JSON object"),
        ({}, "messages: required, must be an array of messages"),
        ({"messages": "hi"}, "messages: required, must be an array of messages"),
        ({"messages": []}, "messages: must not be empty"),
        ({"messages": ["hi"]}, "messages[0]: must be an object"),
        (
            {"messages": [USER, {"role": "bot", "content": "x"}]},
            "messages[1].role: must be one of system, developer, user, assistant, tool",
        ),
        (
            {"messages": [{"role": "user", "content": None}]},
            "messages[0].content: must be a string or an array of text parts",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            'messages[0].content[0]: only {"type": "text", "text": str} parts',
        ),
        ({"messages": [USER], "model": 4}, "model: must be a string"),
        ({"messages": [USER], "stream": "yes"}, "stream: must be true or false"),
        ({"messages": [USER], "max_tokens": 0}, "max_tokens: must be a positive integer"),
        (
            {"messages": [USER], "max_completion_tokens": 1.5},
            "max_completion_tokens: must be a positive integer",
        ),
        (
            {"messages": [{"role": "system", "content": "x"}]},
            "messages: polish mode needs a user message (the text to polish)",
        ),
        (
            {"messages": [USER, {"role": "user", "content": "  "}]},
            "messages[1].content: must not be empty",
        ),
    ],
)
async def test_invalid_requests_are_400_naming_the_field(
    pollex: Any, body: Any, message: str
) -> None:
    client = await pollex(mock=True)

    resp = await client.post("/v1/chat/completions", json=body)

    assert resp.status == 400
    assert await resp.json() == {
        "error": {"message": message, "type": "invalid_request_error", "code": None}
    }


async def test_text_limit_counts_what_reaches_the_model(pollex: Any) -> None:
    client = await pollex(mock=True, max_text_chars=30)
    big_system = {"role": "system", "content": "x" * 100}  # dropped in polish mode

    polish = await client.post("/v1/chat/completions", json={"messages": [big_system, USER]})
    body = {"model": "pollex:chat", "messages": [big_system, USER]}
    chat = await client.post("/v1/chat/completions", json=body)
    long_user = {"messages": [{"role": "user", "content": "y" * 31}]}
    too_long = await client.post("/v1/chat/completions", json=long_user)

    assert polish.status == 200
    assert chat.status == 400
    assert (await chat.json())["error"]["message"] == (
        "messages: longer than 30 characters in total"
    )
    assert too_long.status == 400
    assert (await too_long.json())["error"]["message"] == (
        "messages: the text to polish is longer than 30 characters"
    )


async def test_text_parts_are_joined_and_unknown_fields_ignored(pollex: Any, ollama: Any) -> None:
    client = await pollex(ollama_url=ollama.url, max_output_tokens=100)
    parts = [{"type": "text", "text": "first part"}, {"type": "text", "text": "second"}]
    body = {
        "model": "pollex:chat",
        "messages": [{"role": "user", "content": parts}],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "temperature": 0.7,
        "n": 3,
        "user": "someone",
        "max_tokens": 5000,
    }

    resp = await client.post("/v1/chat/completions", json=body)

    assert resp.status == 200
    sent = ollama.fake.requests[0]
    assert sent["messages"] == [{"role": "user", "content": "first part\nsecond"}]
    assert sent["options"]["num_predict"] == 100  # capped at max_output_tokens
    assert "tools" not in sent


# A polish asks for at most 2 * ceil(chars / 3) + 64 tokens: 82 for USER's 25 characters.
@pytest.mark.parametrize(
    ("limits", "asked"),
    [
        ({"max_tokens": 7}, 7),
        ({"max_completion_tokens": 9, "max_tokens": 7}, 9),
        ({"max_tokens": 500}, 82),
        ({}, 82),
    ],
)
async def test_max_tokens_is_passed_on(
    pollex: Any, ollama: Any, limits: dict[str, int], asked: int
) -> None:
    client = await pollex(ollama_url=ollama.url)

    await client.post("/v1/chat/completions", json={"messages": [USER], **limits})

    assert ollama.fake.requests[0]["options"]["num_predict"] == asked


async def test_length_finish_reason(pollex: Any) -> None:
    client = await pollex(mock=True)
    body = {"model": "pollex", "stream": True, "max_tokens": 2, "messages": [USER]}

    raw = await (await client.post("/v1/chat/completions", json=body)).read()

    chunks = [json.loads(p) for p in data_events(raw)[:-1]]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "length"]


async def test_openai_routes_are_in_request_metrics(pollex: Any) -> None:
    client = await pollex(mock=True)

    await client.get("/v1/models")
    await client.post("/v1/chat/completions", json={"messages": [USER]})

    registry = client.app[METRICS].registry
    for method, route in (("GET", "/v1/models"), ("POST", "/v1/chat/completions")):
        labels = {"method": method, "route": route, "status": "200"}
        assert registry.get_sample_value("pollex_requests_total", labels) == 1
