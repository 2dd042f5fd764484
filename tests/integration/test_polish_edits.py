"""`"edits": true` on `/api/polish`: what changed, in the JSON answer and in `done`."""

from __future__ import annotations

import json
from typing import Any

import pytest
from helpers import collect_events

from pollex import edits as edits_module
from pollex.adapters.mock import tidy
from pollex.edits import Edit, apply_edits, edits

# The mock tidies spacing, capitals and the final stop; the input's edges are stripped.
TEXT = "  i goes  to the store , and i buy milk\n"


def spans(changes: list[Edit]) -> list[tuple[int, int, str, str]]:
    return [(e["start"], e["end"], e["old"], e["new"]) for e in changes]


async def test_json_answer_carries_edits_that_rebuild_the_polished_text(pollex: Any) -> None:
    client = await pollex(mock=True)

    resp = await client.post("/api/polish", json={"text": TEXT, "edits": True})

    assert resp.status == 200
    body = await resp.json()
    assert body["polished"] == tidy(TEXT)
    assert apply_edits(TEXT, body["edits"]) == body["polished"]
    assert spans(body["edits"]) == [
        (0, 3, "  i", "I"),  # the stripped leading blank goes with the first word
        (8, 12, "  to", " to"),  # whitespace joins the shorter word next to it
        (22, 24, " ,", ","),
        (29, 30, "i", "I"),
        (39, 40, "\n", "."),  # the stripped trailing newline, where the stop went
    ]


async def test_done_event_carries_the_same_edits(pollex: Any) -> None:
    client = await pollex(mock=True)
    url = str(client.make_url("/api/polish"))

    events = await collect_events(url, {"text": TEXT, "stream": True, "edits": True})
    as_json = await (await client.post("/api/polish", json={"text": TEXT, "edits": True})).json()

    done = events[-1]
    assert done.event == "done"
    assert apply_edits(TEXT, done.data["edits"]) == done.data["polished"] == tidy(TEXT)
    assert done.data["edits"] == as_json["edits"]
    assert all("edits" not in e.data for e in events[:-1])


@pytest.mark.parametrize("flag", [False, None])
async def test_no_edits_unless_asked(pollex: Any, flag: bool | None) -> None:
    client = await pollex(mock=True)
    url = str(client.make_url("/api/polish"))

    as_json = await (await client.post("/api/polish", json={"text": TEXT, "edits": flag})).json()
    events = await collect_events(url, {"text": TEXT, "stream": True, "edits": flag})

    assert "edits" not in as_json
    assert events[-1].event == "done" and "edits" not in events[-1].data


@pytest.mark.parametrize("value", ["yes", 1, [], {}])
async def test_edits_must_be_a_boolean(pollex: Any, value: Any) -> None:
    client = await pollex(mock=True)

    resp = await client.post("/api/polish", json={"text": TEXT, "edits": value, "stream": True})

    assert resp.status == 400
    assert await resp.json() == {"error": "edits: must be true or false"}


async def test_edits_are_computed_once_per_answer_not_per_token(
    pollex: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str]] = []

    def counting(old: str, new: str) -> list[Edit]:
        calls.append((old, new))
        return edits(old, new)

    monkeypatch.setattr(edits_module, "edits", counting)
    client = await pollex(mock=True)
    url = str(client.make_url("/api/polish"))

    events = await collect_events(url, {"text": TEXT, "stream": True, "edits": True})

    assert sum(e.event == "delta" for e in events) > 1
    assert calls == [(TEXT, tidy(TEXT))]


@pytest.mark.parametrize("stream", [True, False])
async def test_a_lone_surrogate_in_the_text_is_a_replacement_character(
    pollex: Any, stream: bool
) -> None:
    """Half an emoji (a client cut a string between UTF-16 units) must not break the
    answer: it is U+FFFD, one code point for one, so the spans still fit the text sent."""
    client = await pollex(mock=True)
    raw = b'{"text": "i like \\ud83d ok", "edits": true, "stream": %s}'

    resp = await client.post(
        "/api/polish",
        data=raw % (b"true" if stream else b"false"),
        headers={"Content-Type": "application/json"},
    )

    assert resp.status == 200
    if stream:
        body = (await resp.read()).decode()
        done = json.loads(body.split("event: done\ndata: ")[1])
    else:
        done = await resp.json()
    assert done["polished"] == "I like \ufffd ok."
    assert apply_edits("i like \ufffd ok", done["edits"]) == done["polished"]
