"""The playground page as a test (or a person) drives it: settings, send, read a reply."""
from __future__ import annotations

from playwright.sync_api import Locator, Page, expect

# A model's reply on 2 shared cores: the first token may wait behind a prompt, then ~20 tok/s.
REPLY_TIMEOUT_MS = 120_000


class Playground:
    def __init__(self, page: Page, url: str) -> None:
        self.page = page
        self.url = url

    def open(self) -> Playground:
        self.page.goto(self.url)
        return self

    @property
    def model(self) -> Locator:
        return self.page.locator("#model")

    @property
    def notice(self) -> Locator:
        return self.page.locator("#notice")

    @property
    def message(self) -> Locator:
        return self.page.locator("#message")

    @property
    def replies(self) -> Locator:
        return self.page.locator("#transcript .message.assistant")

    def settings(self, **fields: str) -> None:
        """Fills settings by input id, e.g. settings(temperature="0", max_tokens="24")."""
        for field, value in fields.items():
            self.page.locator(f"#{field.replace('_', '-')}").fill(value)

    def send(self, text: str) -> Locator:
        """Sends `text`; returns the reply it gets (still streaming)."""
        expect(self.model).not_to_have_value("")
        count = self.replies.count()
        self.message.fill(text)
        self.page.locator("#send").click()
        expect(self.replies).to_have_count(count + 1)
        return self.replies.nth(count)

    def finished(self, reply: Locator) -> Locator:
        """`reply` once its stream has ended."""
        expect(reply).to_have_attribute("data-state", "done", timeout=REPLY_TIMEOUT_MS)
        return reply

    @staticmethod
    def stats(reply: Locator) -> dict[str, str]:
        """A finished reply's stats by name: ttft, tokens-per-second, prompt, cached, completion, finish."""
        spans = reply.locator("[data-stat]")
        return {
            spans.nth(i).get_attribute("data-stat"): spans.nth(i).get_attribute("data-value")
            for i in range(spans.count())
        }
