"""`POST /api/polish`: pollex's own API. Parses the request; the exchange does the rest."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from pollex.errors import BadRequest
from pollex.routing.jobs import PolishJob
from pollex.web import exchange
from pollex.web.keys import CONFIG, REQUEST_ID, ROUTER, SYSTEM_PROMPT
from pollex.web.wires import Answer, PollexWire, done_payload

JSON_FIELDS = ("polished", "model", "elapsed_ms", "provider", "fallback_from", "edits")

# JSON may carry a lone surrogate (`"\ud800"`, half an emoji cut by a client), which no
# UTF-8 text can: it becomes U+FFFD, one code point for one, so `edits` spans still hold.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class PolishParams:
    text: str
    model_id: str | None
    stream: bool
    fallback: bool
    edits: bool

    @classmethod
    def parse(cls, body: Any, max_text_chars: int) -> PolishParams:
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        text = body.get("text")
        if not isinstance(text, str):
            raise BadRequest("text: required, must be a string")
        if not text.strip():
            raise BadRequest("text: must not be empty")
        if len(text) > max_text_chars:
            raise BadRequest(f"text: longer than {max_text_chars} characters")
        model_id = body.get("model_id")
        if model_id is not None and not isinstance(model_id, str):
            raise BadRequest("model_id: must be a string")
        return cls(
            _LONE_SURROGATE.sub("\ufffd", text),
            model_id or None,
            _flag(body, "stream", False),
            _flag(body, "fallback", True),
            _flag(body, "edits", False),
        )


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"{name}: must be true or false")
    return value


async def polish(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    app = request.config_dict
    config = app[CONFIG]
    params = PolishParams.parse(await exchange.read_json_body(request), config.max_text_chars)
    plan = app[ROUTER].plan(params.model_id, params.fallback)
    job = PolishJob(params.text, app[SYSTEM_PROMPT], config.max_output_tokens)
    exchange.count_input(request, job)
    edits_of = params.text if params.edits else None
    if params.stream or "text/event-stream" in request.headers.get("Accept", ""):
        wire = PollexWire(request[REQUEST_ID], edits_of)
        # Headers wait for the first event or `keepalive_s`, as on /v1: a failure found
        # before then (no backend could serve) is a real 503 with `Retry-After`.
        return await exchange.serve_stream(request, plan, job, started, wire, defer_headers=True)
    return await exchange.serve_json(
        request, plan, job, started, lambda answer: _json_answer(answer, edits_of)
    )


def _json_answer(answer: Answer, edits_of: str | None) -> dict[str, Any]:
    """The original Go service's answer (its browser extension reads it), and more: the
    fields of the stream's `done` that the JSON answer has always had, in its order."""
    done = done_payload(answer, edits_of)
    return {key: done[key] for key in JSON_FIELDS if key in done}
