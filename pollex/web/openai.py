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
from pollex.web.openai_request import CHAT_MODEL, POLISH_MODELS, CompletionParams
from pollex.web.wires import Answer, OpenAIWire, usage_object

# When `GET /v1/models` says the models were created: when the app was built.
MODELS_CREATED = web.AppKey("openai_models_created", int)
# OpenAI answers an unknown model or URL with 404 and `invalid_request_error`.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
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
    app.router.add_get("/models/{model_id:.+}", retrieve_model)
    return app


def openai_error_body(status: int, message: str, code: str | None) -> dict[str, Any]:
    """OpenAI's error shape. `code` is a string (`invalid_api_key`, `model_not_found`,
    `rate_limit_exceeded`) or null, never the status: SDKs type it as a string."""
    error = {"message": message, "type": _ERROR_TYPES.get(status, "server_error"), "code": code}
    return {"error": error}


async def list_models(request: web.Request) -> web.Response:
    data = [_model(request, i) for i in _model_ids(request)]
    return web.json_response({"object": "list", "data": data})


async def retrieve_model(request: web.Request) -> web.Response:
    """`GET /v1/models/{id}`: OpenAI's retrieve call (`client.models.retrieve(id)`). Any id
    `model` accepts is found, `pollex:polish` too, though the list leaves it out."""
    model_id = request.match_info["model_id"]
    if model_id not in POLISH_MODELS and model_id not in _model_ids(request):
        raise ModelNotFound(f"unknown model: {model_id}")
    return web.json_response(_model(request, model_id))


def _model_ids(request: web.Request) -> list[str]:
    return ["pollex", CHAT_MODEL, *(a.id for a in request.config_dict[BACKENDS].listed())]


def _model(request: web.Request, model_id: str) -> dict[str, Any]:
    created = request.config_dict[MODELS_CREATED]
    return {"id": model_id, "object": "model", "created": created, "owned_by": "pollex"}


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
