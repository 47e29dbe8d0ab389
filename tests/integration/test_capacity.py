"""Capacity: a client that goes away frees the worker; a full queue answers 429.

These use their own worker with room for one running and one waiting request, so that
"the slot is free again" and "the queue is full" are observable from outside.
"""
from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import CACHE_DIR
from tests.servers import start_bridge, start_worker

from .conftest import CHAT_MODEL

LONG = {
    "model": CHAT_MODEL,
    "messages": [{"role": "user", "content": "Tell me a very long story."}],
    "max_tokens": 4000,
    "ignore_eos": True,
    "stream": True,
}


@pytest.fixture(scope="module")
def tight_url(tmp_path_factory):
    logs = tmp_path_factory.mktemp("tight")
    address, worker = start_worker(
        logs, "--cache-dir", str(CACHE_DIR), "--no-default-models", "--model", CHAT_MODEL,
        "--max-running", "1", "--max-waiting", "1",
    )
    url, bridge = start_bridge(logs, address)
    yield url
    bridge.stop()
    worker.stop()


def _first_line(response: httpx.Response) -> str:
    return next(line for line in response.iter_lines() if line)


def test_disconnected_stream_frees_the_only_slot(tight_url):
    with httpx.Client(base_url=tight_url, timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", json=LONG) as response:
            assert response.status_code == 200 and _first_line(response).startswith("data: ")
        # The stream above would run for 4000 tokens (over a minute). Its slot must be free now:
        # with room for one sequence, this request can only finish once the other is gone.
        client = openai.OpenAI(base_url=f"{tight_url}/v1", api_key="x", max_retries=0, timeout=30)
        reply = client.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert reply.choices[0].finish_reason in ("stop", "length")


def test_full_queue_is_429_with_retry_after(tight_url):
    with httpx.Client(base_url=tight_url, timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", json=LONG) as running:
            assert running.status_code == 200 and _first_line(running)
            with http.stream("POST", "/v1/chat/completions", json=LONG) as waiting:
                assert waiting.status_code == 200  # admitted to the queue: PromptInfo came back
                rejected = http.post("/v1/chat/completions", json={**LONG, "stream": False})
    assert rejected.status_code == 429
    assert int(rejected.headers["retry-after"]) >= 1
    error = rejected.json()["error"]
    assert error["code"] == "queue_full" and error["message"]
