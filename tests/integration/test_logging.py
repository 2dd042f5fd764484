"""One access-log line per request, with the polish fields; no text and no keys in logs."""

from __future__ import annotations

import json
from typing import Any

import structlog
from helpers import eventually
from structlog.testing import capture_logs

from pollex.log import configure_logging

SECRET_TEXT = "my confidential sentence about the merger"
KEY = "k-very-secret"


async def test_polish_logs_once_with_its_fields(llama: Any, pollex: Any) -> None:
    client = await pollex(llamacpp_url=llama.url, llamacpp_model="gpu", api_key=KEY)

    with capture_logs() as logs:
        resp = await client.post(
            "/api/polish",
            json={"text": SECRET_TEXT, "stream": True},
            headers={"X-API-Key": KEY, "X-Request-ID": "ab" * 16},
        )
        await resp.read()
        # The stream's last byte reaches the client just before the handler logs.
        await eventually(lambda: any(entry["event"] == "request" for entry in logs))

    requests = [entry for entry in logs if entry["event"] == "request"]
    assert len(requests) == 1
    line = requests[0]
    assert {k: line[k] for k in ("method", "route", "status", "model", "provider")} == {
        "method": "POST",
        "route": "/api/polish",
        "status": 200,
        "model": "gpu",
        "provider": "llamacpp",
    }
    assert line["outcome"] == "ok"
    assert line["fallback_from"] is None
    assert line["input_chars"] == len(SECRET_TEXT)
    assert line["output_chars"] == len("i goes to store yesterday")
    assert isinstance(line["ttft_ms"], int) and isinstance(line["duration_ms"], float)
    everything = json.dumps(logs, default=str)
    assert SECRET_TEXT not in everything
    assert "i goes to store" not in everything  # the polished text neither
    assert KEY not in everything


async def test_request_id_is_bound_for_the_whole_request(
    llama: Any, ollama: Any, pollex: Any
) -> None:
    llama.fake.chat = "error500"  # marked down during the request, logged with its id
    client = await pollex(llamacpp_url=llama.url, ollama_url=ollama.url)

    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        await client.post("/api/polish", json={"text": "x"}, headers={"X-Request-ID": "cd" * 16})

    mine = [entry for entry in logs if entry.get("request_id") == "cd" * 16]
    assert {entry["event"] for entry in mine} >= {"request", "adapter_down"}


def test_json_format_is_one_object_per_line(capsys: Any) -> None:
    configure_logging("json", "info")
    try:
        structlog.get_logger("t").info("hello", n=1)
        structlog.get_logger("t").debug("hidden")
    finally:
        structlog.reset_defaults()

    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert (entry["event"], entry["n"], entry["level"]) == ("hello", 1, "info")
    assert entry["timestamp"].endswith("Z")
