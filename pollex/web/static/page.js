// The polish page: text in, the answer streamed out, then the changes marked from `edits`.
// Plain JavaScript, no build step, nothing from the internet. EventSource cannot POST, so
// the stream of POST /api/polish is read with fetch and a small SSE parser.
"use strict";

const KEY_STORAGE = "pollex-api-key";
const $ = (id) => document.getElementById(id);
const form = $("form");
const textArea = $("text");
const modelSelect = $("model");
const polishButton = $("polish");
const stopButton = $("stop");
const keyRow = $("key-row");
const keyInput = $("key");
const remember = $("remember");
const statusLine = $("status");
const result = $("result");
const output = $("output");
const stats = $("stats");
const changes = $("changes");
const changesTitle = $("changes-title");
const legend = $("legend");
const copyButton = $("copy");

let running = null; // the AbortController of the polish in flight
let polished = "";

// --- small helpers ---------------------------------------------------------------------

function say(message, isError = false) {
  statusLine.textContent = message;
  statusLine.classList.toggle("error", isError);
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function seconds(ms) {
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}

function retryIn(response) {
  const wait = Number.parseInt(response.headers.get("Retry-After") || "", 10);
  if (!Number.isFinite(wait) || wait <= 0) return "a moment";
  if (wait < 90) return plural(wait, "second");
  return plural(Math.ceil(wait / 60), "minute");
}

function storedKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return ""; // storage blocked: the key is simply not remembered
  }
}

function storeKey() {
  try {
    if (remember.checked && keyInput.value.trim()) {
      localStorage.setItem(KEY_STORAGE, keyInput.value.trim());
    } else {
      localStorage.removeItem(KEY_STORAGE);
    }
  } catch {
    // storage blocked: nothing to do
  }
}

function withKey(headers) {
  const key = keyInput.value.trim();
  return key ? { ...headers, "X-API-Key": key } : headers;
}

function askForKey() {
  const hadKey = keyInput.value.trim() !== "";
  keyRow.hidden = false;
  keyInput.focus();
  say(
    hadKey
      ? "pollex did not accept this API key. Check it and polish again."
      : "This pollex wants an API key: enter it below, then polish.",
    true,
  );
}

// --- the models, with their availability ----------------------------------------------

async function loadModels() {
  let response;
  try {
    response = await fetch("/api/models", { headers: withKey({}) });
  } catch {
    say("Cannot reach pollex. Is it running?", true);
    return;
  }
  if (response.status === 401) {
    askForKey();
    return;
  }
  if (!response.ok) return;
  const models = await response.json();
  const chosen = modelSelect.value;
  const automatic = new Option("Automatic (the first one available)", "");
  const options = models.map((m) => {
    const option = new Option(`${m.name} — ${m.available ? "available" : "down"}`, m.id);
    option.selected = m.id === chosen;
    return option;
  });
  modelSelect.replaceChildren(automatic, ...options);
}

// --- reading the event stream ------------------------------------------------------------

/** Feeds text in, calls `onEvent(name, data)` per complete event (WHATWG SSE rules). */
function sseParser(onEvent) {
  let buffer = "";
  let name = "";
  let data = [];
  return (text) => {
    buffer += text;
    for (;;) {
      const end = buffer.search(/\r\n|\r|\n/);
      if (end === -1 || (buffer[end] === "\r" && end === buffer.length - 1)) return;
      const line = buffer.slice(0, end);
      buffer = buffer.slice(end + (buffer.startsWith("\r\n", end) ? 2 : 1));
      if (line === "") {
        if (data.length) onEvent(name || "message", data.join("\n"));
        name = "";
        data = [];
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const field = colon === -1 ? line : line.slice(0, colon);
        let value = colon === -1 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") name = value;
        else if (field === "data") data.push(value);
      }
    }
  };
}

async function readAnswer(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let done = null;
  let failure = null;
  const feed = sseParser((name, raw) => {
    const data = JSON.parse(raw);
    if (name === "queued") {
      const wait = data.estimated_wait_s ? `, about ${plural(Math.ceil(data.estimated_wait_s), "second")}` : "";
      say(`Waiting for ${data.model}: number ${data.position} in the queue${wait}.`);
    } else if (name === "start") {
      const instead = data.fallback_from ? ` (${data.fallback_from} is down)` : "";
      say(`${data.model}${instead} is writing…`);
    } else if (name === "delta") {
      output.append(data.text);
    } else if (name === "done") {
      done = data;
    } else if (name === "error") {
      failure = data;
    }
  });
  while (done === null && failure === null) {
    const { value, done: ended } = await reader.read();
    if (ended) break;
    feed(decoder.decode(value, { stream: true }));
  }
  if (failure !== null) throw new Error(streamFailure(failure));
  if (done === null) throw new Error("The connection to pollex was lost mid-answer.");
  return done;
}

function streamFailure(error) {
  if (error.status === 503) return `No model could finish this (${error.error}). Try again in a moment.`;
  if (error.status === 504) return `The model took too long (${error.error}). What arrived is shown.`;
  return `The model failed mid-answer (${error.error}). What arrived is shown.`;
}

// --- errors before the stream, in plain words -------------------------------------------

async function explain(response, text) {
  let message = "";
  try {
    const body = await response.json();
    message = typeof body.error === "string" ? body.error : (body.error?.message ?? "");
  } catch {
    // not pollex's JSON: the status says enough
  }
  const status = response.status;
  if (status === 401) return askForKey();
  if (status === 429) {
    return say(`Too many requests from this address. Try again in ${retryIn(response)}.`, true);
  }
  if (status === 503) {
    loadModels();
    return say(`No model can polish right now: they are down or busy. Try again in ${retryIn(response)}.`, true);
  }
  const tooLong = /longer than (\d+) characters/.exec(message);
  if (tooLong) {
    const length = Array.from(text).length;
    return say(`Your text is too long: this pollex takes at most ${tooLong[1]} characters, and it has ${length}.`, true);
  }
  if (status === 413) return say("Your text is too large for this pollex to take.", true);
  if (message.startsWith("unknown model")) {
    loadModels();
    return say("pollex no longer has that model; the list is updated, pick another.", true);
  }
  if (status === 504) return say("The model took too long to answer. Try a shorter text.", true);
  if (message) return say(`pollex could not polish this: ${message}.`, true);
  return say(`Something other than pollex answered (HTTP ${status}).`, true);
}

// --- the result ----------------------------------------------------------------------------

/** Whitespace inside a mark made visible: a removed space or line break is a change too. */
function visible(text) {
  return text.replace(/\n/g, "↵\n").replace(/\t/g, "→").replace(/[^\S\n]/g, "·");
}

function mark(tag, text) {
  const element = document.createElement(tag);
  element.textContent = visible(text);
  return element;
}

/** The submitted text with each edit marked: `start`/`end` count code points. */
function markChanges(text, edits) {
  const chars = Array.from(text);
  const marked = document.createDocumentFragment();
  let at = 0;
  for (const edit of edits) {
    marked.append(chars.slice(at, edit.start).join(""));
    if (edit.old) marked.append(mark("del", edit.old));
    if (edit.new) marked.append(mark("ins", edit.new));
    at = edit.end;
  }
  marked.append(chars.slice(at).join(""));
  changes.replaceChildren(marked);
}

function showDone(done, text) {
  polished = done.polished;
  output.textContent = polished;
  copyButton.disabled = false;
  const parts = [`first words after ${seconds(done.ttft_ms)}`, `done in ${seconds(done.elapsed_ms)}`];
  const speed = done.usage?.tokens_per_second;
  if (typeof speed === "number") parts.push(`${speed.toFixed(1)} tokens/s`);
  parts.push(done.fallback_from ? `${done.model} (for ${done.fallback_from})` : done.model);
  if (done.finish_reason === "length") parts.push("cut at the output limit");
  stats.textContent = parts.join(" · ");
  const edits = done.edits || [];
  markChanges(text, edits);
  changesTitle.hidden = false;
  changes.hidden = false;
  legend.hidden = edits.length === 0;
  say(edits.length ? `Done: ${plural(edits.length, "change")}, marked below.` : "Done: nothing to change.");
}

// --- one polish ----------------------------------------------------------------------------

function setRunning(controller) {
  running = controller;
  const busy = controller !== null;
  if (!busy && document.activeElement === stopButton) polishButton.focus();
  polishButton.disabled = busy;
  stopButton.disabled = !busy;
  output.setAttribute("aria-busy", String(busy));
}

async function polish() {
  if (running) return;
  const text = textArea.value;
  if (!text.trim()) {
    say("Type or paste a text to polish first.", true);
    textArea.focus();
    return;
  }
  const controller = new AbortController();
  setRunning(controller);
  polished = "";
  copyButton.disabled = true;
  result.hidden = false;
  output.replaceChildren();
  stats.textContent = "";
  changes.hidden = true;
  changesTitle.hidden = true;
  legend.hidden = true;
  say("Waiting for a model…");
  const body = { text, stream: true, edits: true };
  if (modelSelect.value) body.model_id = modelSelect.value;
  try {
    const response = await fetch("/api/polish", {
      method: "POST",
      headers: withKey({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) {
      await explain(response, text);
      return;
    }
    storeKey();
    showDone(await readAnswer(response), text);
  } catch (error) {
    if (controller.signal.aborted) say("Stopped: the model was told to stop. What arrived is shown.");
    else if (error instanceof TypeError) say("Cannot reach pollex. Is it running?", true);
    else say(error.message, true);
  } finally {
    setRunning(null);
    if (!output.textContent) result.hidden = true;
  }
}

async function copyResult() {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(polished);
    } else {
      // Plain http to another machine is not a secure context: the old way still works.
      const area = document.createElement("textarea");
      area.value = polished;
      area.className = "offscreen";
      document.body.append(area);
      area.select();
      const copied = document.execCommand("copy");
      area.remove();
      if (!copied) throw new Error("copy refused");
    }
    say("Copied the polished text.");
  } catch {
    say("Copying did not work: select the text and copy it by hand.", true);
  }
}

// --- wiring ----------------------------------------------------------------------------------

form.addEventListener("submit", (event) => {
  event.preventDefault();
  polish();
});
textArea.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    polish();
  }
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && running) running.abort();
});
stopButton.addEventListener("click", () => running?.abort());
copyButton.addEventListener("click", copyResult);
keyInput.addEventListener("change", () => {
  storeKey();
  loadModels();
});
remember.addEventListener("change", storeKey);

const saved = storedKey();
if (saved) {
  keyInput.value = saved;
  remember.checked = true;
  keyRow.hidden = false;
}
loadModels();
