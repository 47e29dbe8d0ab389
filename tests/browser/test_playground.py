"""The playground at GET / in headless Chromium, on the real worker and bridge: the model picker,
streamed multi-turn replies with their usage, Stop, API errors, JSON-schema mode, API keys, and
Markdown that never becomes HTML."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import jsonschema
import pytest
from playwright.sync_api import Page, expect

from tests.integration.conftest import CHAT_MODEL
from tests.prometheus import scrape
from tests.servers import start_bridge

from .playground import REPLY_TIMEOUT_MS, Playground

SYSTEM = "You are a concise assistant."
# Greedy SmolLM2 counts for far longer than any of these replies may run.
COUNT = "Count from 1 to 1000, separated by commas."
KEY = "playground-key"


def prompt_tokens(bridge_url: str, messages: list[dict[str, str]]) -> int:
    """The prompt length of a chat completion with `messages`, as /tokenize counts it."""
    body = {"model": CHAT_MODEL, "messages": messages, "add_generation_prompt": True}
    response = httpx.post(f"{bridge_url}/tokenize", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["count"]


def streamed_content(events: str) -> str:
    """The text of the only choice of a chat completion stream, from its SSE body."""
    chunks = [json.loads(line[len("data: ") :]) for line in events.splitlines() if line.startswith("data: {")]
    return "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"])


def record_reply_texts(page: Page) -> None:
    """Keeps, in window.replyTexts, every distinct text the newest reply shows as it changes."""
    page.evaluate(
        """() => {
            window.replyTexts = [];
            new MutationObserver(() => {
                const replies = document.querySelectorAll("#transcript .message.assistant .content");
                const text = replies.length ? replies[replies.length - 1].textContent : "";
                if (text && text !== window.replyTexts.at(-1)) window.replyTexts.push(text);
            }).observe(document.getElementById("transcript"), { childList: true, subtree: true, characterData: true });
        }"""
    )


def test_page_lists_the_chat_models_and_picks_the_default(playground: Playground) -> None:
    expect(playground.model).to_have_value(CHAT_MODEL)
    # The embedding model is served too, but cannot chat.
    expect(playground.model.locator("option")).to_have_text([CHAT_MODEL])
    playground.model.select_option(CHAT_MODEL)
    expect(playground.notice).to_be_hidden()


def test_replies_stream_in_with_their_usage_and_the_conversation_goes_on(
    playground: Playground, page: Page, bridge_url: str
) -> None:
    playground.settings(system=SYSTEM, temperature="0", max_tokens="24")
    record_reply_texts(page)
    with page.expect_request("**/v1/chat/completions") as first_request:
        first = playground.finished(playground.send(COUNT))
    sent = first_request.value.post_data_json
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert (sent["model"], sent["temperature"], sent["max_tokens"]) == (CHAT_MODEL, 0, 24)
    history = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": COUNT}]
    assert sent["messages"] == history

    streamed = streamed_content(first_request.value.response().text())
    texts = page.evaluate("window.replyTexts")
    assert len(texts) >= 3, f"the reply appeared in {len(texts)} piece(s), not streamed: {texts}"
    assert texts[-1] == first.locator(".content").text_content()
    stats = Playground.stats(first)
    assert stats["finish"] == "length" and stats["completion"] == "24"
    assert int(stats["prompt"]) == prompt_tokens(bridge_url, history)
    assert int(stats["cached"]) >= 0
    assert stats["ttft"].endswith(" s") and float(stats["tokens-per-second"]) > 0

    # The next turn carries the conversation: the reply as the server streamed it, then the new
    # message.
    follow_up = "Now count backwards from 10."
    with page.expect_request("**/v1/chat/completions") as second_request:
        second = playground.finished(playground.send(follow_up))
    history += [{"role": "assistant", "content": streamed}, {"role": "user", "content": follow_up}]
    assert second_request.value.post_data_json["messages"] == history
    stats = Playground.stats(second)
    assert int(stats["prompt"]) == prompt_tokens(bridge_url, history)
    # The prefix cache still holds the first turn's blocks (prompt and reply).
    assert 0 < int(stats["cached"]) < int(stats["prompt"])


def test_stop_aborts_the_stream_and_the_worker_frees_the_sequence(
    playground: Playground, page: Page, worker_metrics_url: str
) -> None:
    running = "tokenwire_engine_running_sequences"
    aborted = {"model": CHAT_MODEL, "finish_reason": "aborted"}
    before = scrape(worker_metrics_url)
    assert before.value(running, model=CHAT_MODEL) == 0
    playground.settings(temperature="0", max_tokens="2000")
    reply = playground.send(COUNT)
    expect(reply).to_have_attribute("data-state", "streaming", timeout=REPLY_TIMEOUT_MS)
    assert scrape(worker_metrics_url).value(running, model=CHAT_MODEL) == 1
    page.locator("#stop").click()

    expect(reply).to_have_attribute("data-state", "stopped")
    expect(reply.locator('[data-stat="finish"]')).to_have_attribute("data-value", "stopped")
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#stop")).to_be_disabled()
    deadline = time.monotonic() + 30
    while True:
        after = scrape(worker_metrics_url)
        freed = after.value(running, model=CHAT_MODEL) == 0
        if freed and after.value("tokenwire_engine_sequences_finished_total", **aborted) > before.value(
            "tokenwire_engine_sequences_finished_total", **aborted
        ):
            break
        assert time.monotonic() < deadline, "the worker still runs the stopped reply"
        time.sleep(0.1)
    generated = "tokenwire_engine_generated_tokens_total"
    assert after.value(generated, model=CHAT_MODEL) - before.value(generated, model=CHAT_MODEL) < 2000


def test_an_api_error_shows_the_envelopes_message(playground: Playground, page: Page) -> None:
    expect(playground.model).to_have_value(CHAT_MODEL)
    playground.settings(temperature="3")
    playground.message.fill("Hello there")
    page.locator("#send").click()
    expect(playground.notice).to_have_text("Invalid value for 'temperature': Input should be less than or equal to 2.")
    # The turn is taken back: nothing in the conversation, the text back in the composer.
    expect(page.locator("#transcript .message")).to_have_count(0)
    expect(page.locator("#transcript .empty")).to_be_visible()
    expect(playground.message).to_have_value("Hello there")


SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 30}, "country": {"type": "string", "maxLength": 30}},
    "required": ["city", "country"],
    "additionalProperties": False,
}


def test_json_schema_mode_replies_with_json_that_matches_the_schema(playground: Playground, page: Page) -> None:
    page.locator("#json-mode").check()
    schema = page.locator("#json-schema")
    schema.fill("{not json")
    playground.message.fill("Where is the Eiffel Tower?")
    page.locator("#send").click()
    expect(playground.notice).to_contain_text("The JSON schema is not valid JSON")

    schema.fill(json.dumps(SCHEMA, indent=2))
    playground.settings(temperature="0", max_tokens="128")
    reply = playground.finished(playground.send("Where is the Eiffel Tower?"))
    assert Playground.stats(reply)["finish"] == "stop"
    jsonschema.validate(json.loads(reply.locator(".content pre").inner_text()), SCHEMA)


HOSTILE_MARKDOWN = """# Title <script>window.pwned = 1</script>
Some **bold <img src=x onerror="window.pwned = 1">** and `<b>code</b>`, [a link](https://example.com/)
and [another](javascript:window.pwned=1).
- item <iframe src="javascript:window.pwned = 1"></iframe>

- second
```html
<script>window.pwned = 1</script>
```"""


def test_markdown_becomes_elements_and_model_text_never_becomes_html(page: Page, bridge_url: str) -> None:
    page.goto(bridge_url)
    rendered = page.evaluate(
        """async (source) => {
            const { renderMarkdown } = await import("/static/markdown.js");
            const root = document.createElement("div");
            root.append(renderMarkdown(source));
            document.body.append(root);
            const elements = [...root.querySelectorAll("*")];
            return {
                tags: elements.map((node) => node.localName),
                attributes: [...new Set(elements.flatMap((node) => [...node.attributes].map((a) => a.name)))],
                links: [...root.querySelectorAll("a")].map((a) => [a.textContent, a.href]),
                text: root.textContent,
                pwned: window.pwned ?? null,
            };
        }""",
        HOSTILE_MARKDOWN,
    )
    assert rendered["tags"] == ["h1", "p", "strong", "code", "a", "br", "ul", "li", "li", "pre", "code"]
    assert sorted(rendered["attributes"]) == ["data-language", "href", "rel", "target"]
    assert rendered["links"] == [["a link", "https://example.com/"]]
    for markup in ("<script>window.pwned = 1</script>", '<img src=x onerror="window.pwned = 1">', "<b>code</b>"):
        assert markup in rendered["text"]
    assert "[another](javascript:window.pwned=1)" in rendered["text"]
    assert rendered["pwned"] is None


@pytest.fixture(scope="module")
def keyed_bridge_url(worker_address: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A bridge that requires KEY, in front of the session's worker."""
    url, bridge = start_bridge(tmp_path_factory.mktemp("keyed"), worker_address, f"--api-key={KEY}")
    yield url
    bridge.stop()


def test_the_api_key_field_opens_a_server_that_requires_keys(page: Page, keyed_bridge_url: str) -> None:
    playground = Playground(page, keyed_bridge_url).open()
    key = page.locator("#api-key")
    expect(playground.notice).to_contain_text("You didn't provide an API key.")
    expect(playground.model.locator("option")).to_have_count(0)
    key.fill("not-the-key")
    key.blur()
    expect(playground.notice).to_have_text("Incorrect API key provided.")
    key.fill(KEY)
    key.blur()
    expect(playground.model).to_have_value(CHAT_MODEL)
    expect(playground.notice).to_be_hidden()

    playground.settings(max_tokens="4")
    reply = playground.finished(playground.send("Hi!"))
    assert Playground.stats(reply)["finish"] in ("length", "stop")
    # Kept for this tab's session only: there after a reload, never in persistent storage.
    assert page.evaluate("[sessionStorage.getItem('tokenwire.apiKey'), localStorage.length]") == [KEY, 0]
    page.reload()
    expect(key).to_have_value(KEY)
    expect(playground.model).to_have_value(CHAT_MODEL)
