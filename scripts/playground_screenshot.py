"""Takes the README's screenshot of the playground after two real turns, in headless Chromium.

    .venv/bin/python -m scripts.playground_screenshot [--url http://127.0.0.1:8000] [--out docs/playground.png]

Without --url it starts a worker and a bridge of its own, as the tests do.
"""
from __future__ import annotations

import argparse
import contextlib
import pathlib
import tempfile
from collections.abc import Iterator

from playwright.sync_api import sync_playwright

from tests.browser.chromium import VIEWPORT, launch
from tests.browser.playground import Playground
from tests.servers import ROOT, start_bridge, start_worker

# Two turns: the second one's prompt is mostly the first turn, which the prefix cache serves.
TURNS = (
    ("Give me three tips for writing clear Python, as a list.", "160"),
    ("Show one of them in a short code example.", "120"),
)


@contextlib.contextmanager
def stack() -> Iterator[str]:
    """A worker and a bridge of its own; yields the bridge's URL."""
    with tempfile.TemporaryDirectory() as logs:
        address, worker = start_worker(pathlib.Path(logs))
        try:
            url, bridge = start_bridge(pathlib.Path(logs), address)
            try:
                yield url
            finally:
                bridge.stop()
        finally:
            worker.stop()


def screenshot(url: str, out: pathlib.Path) -> None:
    with sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page(viewport=VIEWPORT)
        playground = Playground(page, url).open()
        playground.settings(system="You are a concise assistant.", temperature="0")
        for text, max_tokens in TURNS:
            playground.settings(max_tokens=max_tokens)
            playground.finished(playground.send(text))
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running bridge, e.g. http://127.0.0.1:8000 (default: start one)")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "docs" / "playground.png")
    args = parser.parse_args()
    with contextlib.nullcontext(args.url) if args.url else stack() as url:
        screenshot(url, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
