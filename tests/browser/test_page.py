"""The polish page in Chromium against `pollex serve --mock` (a word every 30 ms).

Set `POLLEX_SCREENSHOT=docs/page.png` to also write the screenshot the README shows.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from helpers import PollexProcess

if TYPE_CHECKING or importlib.util.find_spec("playwright") is not None:
    # Without Playwright the `browser` fixture skips these tests (fails them under CI).
    from playwright.sync_api import expect

from pollex.adapters.mock import tidy

TEXT = "i has went to the store yesterday , it were closed.\nwe goes home  after that and i was sad"
LONG = " ".join(["this sentence goes on and on"] * 40)  # 240 words: 7 s of mock output
PNG = b"\x89PNG\r\n\x1a\n"

# In the page, whitespace inside a mark is shown: · a space, → a tab, ↵ a line break.
VISIBLE = str.maketrans({"\n": "↵\n", "\t": "→", " ": "·"})


class Console:
    """What the page logged or failed to load: each is an error a person would see in
    the browser's developer tools."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        self.loaded: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        page.on("requestfailed", lambda r: self.errors.append(f"failed: {r.url} {r.failure}"))
        page.on("response", self._response)

    def _console(self, message: Any) -> None:
        if message.type in ("error", "warning"):
            self.errors.append(f"{message.type}: {message.text}")

    def _response(self, response: Any) -> None:
        self.loaded.append(f"{response.status} {response.url}")
        if response.status >= 400:
            self.errors.append(f"HTTP {response.status}: {response.url}")


def open_page(page: Any, pollex: PollexProcess) -> Console:
    console = Console(page)
    page.goto(pollex.url + "/")
    return console


def wait_for_models(page: Any) -> None:
    expect(page.locator("#model option")).to_have_count(2)


def wait_until(page: Any, script: str, timeout_s: float = 10.0) -> None:
    """Poll `script` (a function) until it is true. Not `wait_for_function`: that
    evaluates a string in the page, which its Content-Security-Policy forbids."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(script):
        assert time.monotonic() < deadline, f"still false after {timeout_s} s: {script}"
        time.sleep(0.01)


def record(page: Any, element_id: str) -> None:
    """What the element shows, from now on, into `window.seen[element_id]`: its whole text
    after each batch of changes, and, for a text replaced several times in one batch (events
    that arrived together), each text it was given."""
    page.evaluate(
        """(id) => {
            const element = document.getElementById(id);
            window.seen = window.seen || {};
            const seen = window.seen[id] = [];
            new MutationObserver((changes) => {
                for (const change of changes) {
                    if (change.removedNodes.length && change.addedNodes.length) {
                        seen.push(...[...change.addedNodes].map((n) => n.textContent));
                    }
                }
                seen.push(element.textContent);
            }).observe(element, {childList: true, characterData: true, subtree: true});
        }""",
        element_id,
    )


def seen(page: Any, element_id: str) -> list[str]:
    return list(page.evaluate("(id) => window.seen[id]", element_id))


def marks(page: Any) -> list[tuple[str, str]]:
    """The children of the changes view: ("#text", text), ("DEL", text), ("INS", text)."""
    return [
        (tag, text)
        for tag, text in page.eval_on_selector(
            "#changes", "e => [...e.childNodes].map(n => [n.nodeName, n.textContent])"
        )
        if text
    ]


def expected_marks(text: str, edits: list[dict[str, Any]]) -> list[tuple[str, str]]:
    expected = []
    at = 0
    for edit in edits:
        expected.append(("#text", text[at : edit["start"]]))
        expected.append(("DEL", edit["old"].translate(VISIBLE)))
        expected.append(("INS", edit["new"].translate(VISIBLE)))
        at = edit["end"]
    expected.append(("#text", text[at:]))
    return [(tag, part) for tag, part in expected if part]


# --- the page as served ------------------------------------------------------------------


def test_page_loads_with_no_console_errors(page: Any, serve_pollex: Any) -> None:
    pollex = serve_pollex()

    console = open_page(page, pollex)
    wait_for_models(page)
    page.wait_for_load_state("networkidle")

    assert console.errors == []
    assert f"200 {pollex.url}/favicon.svg" in console.loaded  # no 404 for the icon either
    assert page.title() == "pollex — polish your English"
    assert page.eval_on_selector("#model", "s => [...s.options].map(o => o.text)") == [
        "Automatic (the first one available)",
        "Mock — available",
    ]
    # Every control has a label a screen reader reads out.
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('textarea, select, input')]
              .filter(e => e.labels.length === 0).map(e => e.id)"""
    )
    assert unlabelled == []


def test_readable_at_360_px(page: Any, serve_pollex: Any) -> None:
    pollex = serve_pollex()
    page.set_viewport_size({"width": 360, "height": 800})
    open_page(page, pollex)
    page.fill("#text", TEXT)
    page.click("#polish")
    page.wait_for_selector("#changes:not([hidden])")

    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    for selector in ("#text", "#model", "#polish", "#stop", "#output", "#changes"):
        box = page.locator(selector).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 360, selector


# --- a polish ----------------------------------------------------------------------------


def test_polish_streams_then_marks_the_changes(
    page: Any, serve_pollex: Any, tmp_path: Path
) -> None:
    pollex = serve_pollex()
    console = open_page(page, pollex)
    wait_for_models(page)
    page.fill("#text", TEXT)
    record(page, "output")

    page.press("#text", "Control+Enter")  # the keyboard way; the button is tested below
    page.wait_for_selector("#changes:not([hidden])", timeout=10_000)

    polished = tidy(TEXT)
    states = seen(page, "output")
    intermediate = [s for s in dict.fromkeys(states) if s and s != polished]
    assert len(intermediate) >= 2, states  # the answer grew in front of the reader
    assert all(polished.startswith(s.rstrip()) for s in intermediate)
    assert page.inner_text("#output") == polished
    stats = page.inner_text("#stats")
    assert stats.startswith("first words after ") and " · done in " in stats
    assert stats.endswith(" · mock")
    # The marks are the API's edits for the same text (the mock is deterministic).
    edits = httpx.post(
        f"{pollex.url}/api/polish", json={"text": TEXT, "edits": True}, timeout=10
    ).json()["edits"]
    assert marks(page) == expected_marks(TEXT, edits)
    assert ("DEL", "yesterday·,") not in marks(page) and ("DEL", "·,") in marks(page)
    assert page.inner_text("#status") == f"Done: {len(edits)} changes, marked below."
    assert console.errors == []

    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes().startswith(PNG)
    if os.environ.get("POLLEX_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["POLLEX_SCREENSHOT"])


def test_copy_puts_the_polished_text_on_the_clipboard(browser: Any, serve_pollex: Any) -> None:
    pollex = serve_pollex()
    context = browser.new_context(permissions=["clipboard-read", "clipboard-write"])
    try:
        page = context.new_page()
        open_page(page, pollex)
        page.fill("#text", "i goes home")
        page.click("#polish")
        page.wait_for_selector("#copy:not([disabled])")

        page.click("#copy")

        expect(page.locator("#status")).to_have_text("Copied the polished text.")
        assert page.evaluate("navigator.clipboard.readText()") == tidy("i goes home")
    finally:
        context.close()


def test_stop_cancels_the_request_on_the_server(page: Any, serve_pollex: Any) -> None:
    pollex = serve_pollex()
    open_page(page, pollex)
    page.fill("#text", LONG)
    with page.expect_response(lambda r: r.url.endswith("/api/polish")) as answer:
        page.click("#polish")
    request_id = answer.value.headers["x-request-id"]
    wait_until(page, "() => document.getElementById('output').textContent.length > 20")

    page.click("#stop")

    page.wait_for_selector("#stop[disabled]")
    assert page.inner_text("#status").startswith("Stopped")
    shown = page.inner_text("#output")
    assert shown and tidy(LONG).startswith(shown)
    assert len(shown) < len(tidy(LONG)) / 2
    line = pollex.access_log(request_id)
    assert (line["route"], line["outcome"]) == ("/api/polish", "client_gone")


def test_escape_stops_too(page: Any, serve_pollex: Any) -> None:
    pollex = serve_pollex()
    open_page(page, pollex)
    page.fill("#text", LONG)
    page.press("#text", "Control+Enter")
    wait_until(page, "() => document.getElementById('output').textContent.length > 0")

    page.keyboard.press("Escape")

    page.wait_for_selector("#polish:not([disabled])")
    assert page.inner_text("#status").startswith("Stopped")


def sse(*events: tuple[str, dict[str, Any]]) -> str:
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)


def answer_polish_with(page: Any, body: str) -> None:
    """`/api/polish` answers this event stream (all at once) instead of pollex."""
    page.route(
        "**/api/polish",
        lambda route: route.fulfill(
            status=200, headers={"Content-Type": "text/event-stream"}, body=body
        ),
    )


START = ("start", {"request_id": "0" * 32, "model": "qwen", "provider": "llamacpp"})


def test_queue_position_then_a_stream_cut_short(page: Any, serve_pollex: Any) -> None:
    """The `queued` events of the capacity work (design: HTTP API), then no `done`."""
    pollex = serve_pollex()
    open_page(page, pollex)
    answer_polish_with(
        page,
        sse(
            ("queued", {"position": 2, "model": "qwen", "estimated_wait_s": 11.2}),
            ("queued", {"position": 1, "model": "qwen", "estimated_wait_s": 4}),
            START,
            ("delta", {"text": "I went"}),
        ),
    )
    page.fill("#text", "i goes")
    record(page, "status")

    page.click("#polish")

    page.wait_for_selector("#polish:not([disabled])")
    shown = list(dict.fromkeys(seen(page, "status")))  # in order, once each
    assert shown[1:4] == [
        "Waiting for qwen: number 2 in the queue, about 12 seconds.",
        "Waiting for qwen: number 1 in the queue, about 4 seconds.",
        "qwen is writing…",
    ]
    assert page.inner_text("#status") == "The connection to pollex was lost mid-answer."
    assert page.inner_text("#output") == "I went"  # what arrived stays


def test_timings_and_speed_from_done(page: Any, serve_pollex: Any) -> None:
    """A real backend reports tokens/s; the mock does not, so its `done` is made here."""
    pollex = serve_pollex()
    open_page(page, pollex)
    done = {
        "polished": "I went.",
        "model": "qwen",
        "provider": "llamacpp",
        "elapsed_ms": 43012,
        "ttft_ms": 2480,
        "fallback_from": "qwen-gpu",
        "finish_reason": "length",
        "usage": {"prompt_tokens": 30, "completion_tokens": 3, "tokens_per_second": 4.25},
        "edits": [{"start": 0, "end": 6, "old": "i goes", "new": "I went."}],
    }
    answer_polish_with(page, sse(START, ("delta", {"text": "I went."}), ("done", done)))
    page.fill("#text", "i goes")

    page.click("#polish")

    page.wait_for_selector("#changes:not([hidden])")
    assert page.inner_text("#stats") == (
        "first words after 2.5 s · done in 43.0 s · 4.3 tokens/s · qwen (for qwen-gpu)"
        " · cut at the output limit"
    )
    assert marks(page) == [("DEL", "i·goes"), ("INS", "I·went.")]
    assert page.inner_text("#status") == "Done: 1 change, marked below."


def test_an_error_event_mid_answer(page: Any, serve_pollex: Any) -> None:
    pollex = serve_pollex()
    open_page(page, pollex)
    error = {"error": "upstream stopped sending output", "status": 504}
    answer_polish_with(page, sse(START, ("delta", {"text": "I went"}), ("error", error)))
    page.fill("#text", "i goes")

    page.click("#polish")

    page.wait_for_selector("#polish:not([disabled])")
    assert page.inner_text("#status") == (
        "The model took too long (upstream stopped sending output). What arrived is shown."
    )
    assert page.inner_text("#output") == "I went"


# --- the API key ---------------------------------------------------------------------------


def test_key_flow(page: Any, serve_pollex: Any) -> None:
    pollex = serve_pollex(api_key="the-right-key")
    open_page(page, pollex)

    # The models need the key: the page asks for it at once.
    page.wait_for_selector("#key-row:not([hidden])")
    assert "wants an API key" in page.inner_text("#status")
    page.fill("#text", "i goes home")

    page.fill("#key", "a-wrong-key")
    page.click("#polish")
    expect(page.locator("#status")).to_contain_text("did not accept")

    page.fill("#key", "the-right-key")
    page.check("#remember")
    page.click("#polish")
    page.wait_for_selector("#changes:not([hidden])")
    assert page.inner_text("#output") == tidy("i goes home")
    assert page.evaluate("localStorage.getItem('pollex-api-key')") == "the-right-key"

    # Remembered: a new visit has the key and the models at once.
    page.reload()
    wait_for_models(page)
    assert page.input_value("#key") == "the-right-key"
    assert page.is_checked("#remember")

    # Not remembered any more: gone from storage, and not written back by a polish.
    page.uncheck("#remember")
    assert page.evaluate("localStorage.getItem('pollex-api-key')") is None
    page.fill("#text", "i goes home")
    page.click("#polish")
    page.wait_for_selector("#changes:not([hidden])")
    assert page.evaluate("localStorage.getItem('pollex-api-key')") is None


# --- errors in plain words -----------------------------------------------------------------


def polish_and_read_status(page: Any, text: str) -> str:
    page.fill("#text", text)
    with page.expect_response(lambda r: r.url.endswith("/api/polish")):
        page.click("#polish")
    page.wait_for_selector("#polish:not([disabled])")
    return str(page.inner_text("#status"))


def test_text_too_long(page: Any, serve_pollex: Any) -> None:
    pollex = serve_pollex(max_text_chars="20")
    open_page(page, pollex)

    status = polish_and_read_status(page, "i goes home and i stay there")

    assert status == (
        "Your text is too long: this pollex takes at most 20 characters, and it has 28."
    )


def test_backend_down_and_rate_limited(page: Any, serve_pollex: Any) -> None:
    # Nothing listens on port 9 of loopback: the only backend is down.
    pollex = serve_pollex(llamacpp_url="http://127.0.0.1:9", rate_limit_per_minute="3")
    open_page(page, pollex)
    wait_for_models(page)
    assert page.eval_on_selector("#model", "s => s.options[1].text").endswith(" — down")

    down = polish_and_read_status(page, "i goes home")
    # Until the window is full (whether model listings count in it or not).
    for _ in range(5):
        limited = polish_and_read_status(page, "i goes home")
        if limited.startswith("Too many"):
            break

    assert down == ("No model can polish right now: they are down or busy. Try again in 5 seconds.")
    assert limited.startswith("Too many requests from this address. Try again in ")
    assert limited.endswith(" seconds.") or limited.endswith(" minute.")
