"""The OpenAI-compatible facade: `POST /v1/chat/completions` and `GET /v1/models`.

Editor plugins that already speak the OpenAI API (Continue, Zed, avante, gptel,
CodeCompanion, openai-python) use pollex through it, with the failover of /api/polish:
the request is planned and served by the same router and exchange; this sub-application
only parses OpenAI's request (`openai_request`), writes OpenAI's wire (`wires`), and
shapes its errors the OpenAI way (docs/upstreams.md, "OpenAI").
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from pollex.errors import ModelNotFound, UnknownModel
from pollex.web import exchange
from pollex.web.errors import ERROR_BODY
from pollex.web.keys import BACKENDS, CONFIG, LOG_FIELDS, REQUEST_ID, ROUTER, SYSTEM_PROMPT
from pollex.web.openai_request import CHAT_MODEL, CompletionParams
from pollex.web.wires import Answer, OpenAIWire, usage_object

# When `GET /v1/models` says the models were created: when the app was built.
MODELS_CREATED = web.AppKey("openai_models_created", int)
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_app() -> web.Application:
    """The `/v1` sub-application; its errors take OpenAI's shape."""
    app = web.Application()
    app[ERROR_BODY] = openai_error_body
    app[MODELS_CREATED] = int(time.time())
    app.router.add_post("/chat/completions", chat_completions)
    app.router.add_get("/models", list_models)
    return app


def openai_error_body(status: int, message: str, code: str | None) -> dict[str, Any]:
    error = {
        "message": message,
        "type": _ERROR_TYPES.get(status, "server_error"),
        "code": code or status,
    }
    return {"error": error}


async def list_models(request: web.Request) -> web.Response:
    created = request.config_dict[MODELS_CREATED]
    ids = ["pollex", CHAT_MODEL, *(a.id for a in request.config_dict[BACKENDS].listed())]
    data = [{"id": i, "object": "model", "created": created, "owned_by": "pollex"} for i in ids]
    return web.json_response({"object": "list", "data": data})


async def chat_completions(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    app = request.config_dict
    config = app[CONFIG]
    params = CompletionParams.parse(await exchange.read_json_body(request), config.max_text_chars)
    try:
        plan = app[ROUTER].plan(params.backend_id, True)
    except UnknownModel as exc:
        raise ModelNotFound(exc.message) from None
    job = params.job(app[SYSTEM_PROMPT], config.max_output_tokens)
    request[LOG_FIELDS]["mode"] = "openai_polish" if params.polish else "openai_chat"
    exchange.count_input(request, job)
    if params.stream:
        wire = OpenAIWire(_completion_id(request), int(time.time()), params.include_usage)
        return await exchange.serve_stream(request, plan, job, started, wire, defer_headers=True)
    return await exchange.serve_json(
        request, plan, job, started, lambda answer: _completion(request, answer)
    )


def _completion_id(request: web.Request) -> str:
    """`chatcmpl-` + the request id, so a client's id points at pollex's log line."""
    return f"chatcmpl-{request[REQUEST_ID]}"


def _completion(request: web.Request, answer: Answer) -> dict[str, Any]:
    served = answer.served
    body: dict[str, Any] = {
        "id": _completion_id(request),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": served.adapter.id,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": served.text},
                "finish_reason": served.finish.reason or "stop",
            }
        ],
    }
    if served.finish.usage is not None:
        body["usage"] = usage_object(served.finish.usage)
    return body
