// The playground page: settings, the conversation, and one streamed reply at a time.
import { listModels, streamChat } from "./api.js";
import { renderMarkdown } from "./markdown.js";

const KEY_STORAGE = "tokenwire.apiKey";
const byId = (id) => document.getElementById(id);
const ui = {
  model: byId("model"),
  system: byId("system"),
  temperature: byId("temperature"),
  topP: byId("top-p"),
  maxTokens: byId("max-tokens"),
  seed: byId("seed"),
  jsonMode: byId("json-mode"),
  schema: byId("json-schema"),
  apiKey: byId("api-key"),
  transcript: byId("transcript"),
  notice: byId("notice"),
  composer: byId("composer"),
  message: byId("message"),
  send: byId("send"),
  stop: byId("stop"),
  newChat: byId("new-chat"),
};
// Request fields read from number inputs; an empty input leaves its field to the server.
const NUMBER_FIELDS = [
  ["temperature", ui.temperature],
  ["top_p", ui.topP],
  ["max_tokens", ui.maxTokens],
  ["seed", ui.seed],
];

// The turns sent with the next request (the system prompt is read at each send).
const history = [];
let inFlight = null; // the AbortController of the reply being streamed

function element(tag, className, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  node.append(...children);
  return node;
}

function showNotice(message) {
  ui.notice.textContent = message;
  ui.notice.hidden = !message;
}

function apiKey() {
  return ui.apiKey.value.trim();
}

async function loadModels() {
  const previous = ui.model.value;
  try {
    const models = (await listModels(apiKey())).filter((model) => model.kind !== "embedding");
    ui.model.replaceChildren(...models.map((model) => new Option(model.id, model.id)));
    if (models.some((model) => model.id === previous)) ui.model.value = previous;
    showNotice(models.length ? "" : "The server serves no chat model.");
  } catch (error) {
    ui.model.replaceChildren();
    showNotice(error.message);
  }
}

/** The chat completion request for the conversation so far; throws on a schema that isn't JSON. */
function requestBody() {
  const system = ui.system.value.trim();
  const messages = system ? [{ role: "system", content: system }, ...history] : [...history];
  const body = { model: ui.model.value, messages };
  for (const [field, input] of NUMBER_FIELDS) {
    if (input.value !== "") body[field] = Number(input.value);
  }
  if (ui.jsonMode.checked) {
    let schema;
    try {
      schema = JSON.parse(ui.schema.value);
    } catch (error) {
      throw new Error(`The JSON schema is not valid JSON: ${error.message}`);
    }
    body.response_format = { type: "json_schema", json_schema: { name: "playground", schema, strict: true } };
  }
  return body;
}

function addMessage(role, label) {
  const content = element("div", "content");
  const stats = element("footer", "stats");
  const message = element("article", `message ${role}`, element("header", "role", label), content, stats);
  ui.transcript.append(message);
  return { message, content, stats };
}

function scrollToEnd() {
  ui.transcript.scrollTop = ui.transcript.scrollHeight;
}

function renderReply(reply, text, json) {
  reply.content.replaceChildren(json ? element("pre", "", element("code", "", text)) : renderMarkdown(text));
  scrollToEnd();
}

function stat(name, label, value, title) {
  const node = element("span", "", `${label} `, element("b", "", value ?? "–"));
  node.dataset.stat = name;
  node.dataset.value = value ?? "";
  node.title = title;
  return node;
}

/** TTFT, tokens/s, prompt, cached and completion tokens (from the usage chunk), finish reason. */
function showStats(reply, { started, firstTokenAt, endedAt, usage, finish }) {
  const ttft = firstTokenAt === null ? null : `${((firstTokenAt - started) / 1000).toFixed(2)} s`;
  const decodeSeconds = firstTokenAt === null ? 0 : (endedAt - firstTokenAt) / 1000;
  const rate =
    usage && usage.completion_tokens > 1 && decodeSeconds > 0
      ? ((usage.completion_tokens - 1) / decodeSeconds).toFixed(1)
      : null;
  reply.stats.replaceChildren(
    stat("ttft", "TTFT", ttft, "time to first token, from sending the request"),
    stat("tokens-per-second", "tok/s", rate, "tokens per second after the first token"),
    stat("prompt", "prompt", usage?.prompt_tokens, "prompt tokens"),
    stat("cached", "cached", usage?.prompt_tokens_details?.cached_tokens, "prompt tokens served from the prefix cache"),
    stat("completion", "completion", usage?.completion_tokens, "completion tokens"),
    stat("finish", "finish", finish, "finish reason"),
  );
}

function setBusy(busy) {
  ui.send.disabled = busy;
  ui.newChat.disabled = busy;
  ui.stop.disabled = !busy;
}

function showEmptyState() {
  ui.transcript.replaceChildren(element("p", "empty", "Ask anything: replies stream from /v1/chat/completions."));
}

/** Takes back a turn that got no reply: its text returns to the composer. */
function withdraw(turn, reply, text) {
  history.pop();
  turn.message.remove();
  reply.message.remove();
  if (!history.length) showEmptyState();
  ui.message.value = text;
}

async function send(event) {
  event.preventDefault();
  const text = ui.message.value.trim();
  if (!text || inFlight) return;
  history.push({ role: "user", content: text });
  let body;
  try {
    body = requestBody();
  } catch (error) {
    history.pop();
    showNotice(error.message);
    return;
  }
  showNotice("");
  ui.message.value = "";
  ui.transcript.querySelector(".empty")?.remove();
  const turn = addMessage("user", "You");
  turn.content.textContent = text;
  const reply = addMessage("assistant", body.model);
  reply.message.dataset.state = "waiting";
  scrollToEnd();

  inFlight = new AbortController();
  setBusy(true);
  const timing = { started: performance.now(), firstTokenAt: null, endedAt: null, usage: null, finish: null };
  let content = "";
  // A reply is rendered (markdown parsed, DOM replaced) at most once per frame, not per chunk.
  let frame = null;
  const render = () => renderReply(reply, content, Boolean(body.response_format));
  try {
    await streamChat(body, {
      apiKey: apiKey(),
      signal: inFlight.signal,
      onChunk(chunk) {
        if (chunk.usage) timing.usage = chunk.usage;
        const choice = chunk.choices[0];
        if (choice?.delta?.content) {
          timing.firstTokenAt ??= performance.now();
          content += choice.delta.content;
          reply.message.dataset.state = "streaming";
          frame ??= requestAnimationFrame(() => {
            frame = null;
            render();
          });
        }
        if (choice?.finish_reason) timing.finish = choice.finish_reason;
      },
    });
  } catch (error) {
    if (error.name !== "AbortError" || !content) {
      withdraw(turn, reply, text);
      if (error.name !== "AbortError") showNotice(error.message);
      return;
    }
    timing.finish = "stopped";
  } finally {
    if (frame !== null) cancelAnimationFrame(frame);
    inFlight = null;
    setBusy(false);
  }
  render();
  timing.endedAt = performance.now();
  history.push({ role: "assistant", content });
  reply.message.dataset.state = timing.finish === "stopped" ? "stopped" : "done";
  showStats(reply, timing);
  scrollToEnd();
}

function newChat() {
  history.length = 0;
  showEmptyState();
  showNotice("");
}

ui.composer.addEventListener("submit", send);
ui.message.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});
ui.stop.addEventListener("click", () => inFlight?.abort());
ui.newChat.addEventListener("click", newChat);
ui.jsonMode.addEventListener("change", () => {
  ui.schema.hidden = !ui.jsonMode.checked;
});
ui.apiKey.addEventListener("change", () => {
  if (apiKey()) sessionStorage.setItem(KEY_STORAGE, apiKey());
  else sessionStorage.removeItem(KEY_STORAGE);
  loadModels();
});

ui.apiKey.value = sessionStorage.getItem(KEY_STORAGE) ?? "";
newChat();
loadModels();
