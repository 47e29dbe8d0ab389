"""Byte-level Server-Sent Events checks with raw httpx."""
from __future__ import annotations

import json

from .conftest import CHAT_MODEL


def _events(http, path: str, body: dict) -> list[str]:
    with http.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    assert raw.endswith("data: [DONE]\n\n")
    events = raw.split("\n\n")[:-1]
    for event in events:
        assert event.startswith("data: ") and "\n" not in event, f"bad SSE event {event!r}"
    return [event[len("data: ") :] for event in events]


def _chat_body(**extra) -> dict:
    return {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": "Name two planets."}],
        "temperature": 0,
        "max_tokens": 12,
        "stream": True,
        **extra,
    }


def test_chat_stream_framing_and_chunk_order(http):
    payloads = _events(http, "/v1/chat/completions", _chat_body())
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(p == json.dumps(c, separators=(",", ":")) for p, c in zip(payloads, chunks))
    assert len({(c["id"], c["created"], c["model"]) for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)
    first = chunks[0]["choices"][0]
    assert first["delta"] == {"role": "assistant", "content": ""} and first["finish_reason"] is None
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert finishes == ["length"] and chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all("logprobs" in ch for c in chunks for ch in c["choices"])


# The usage chunk (stream_options.include_usage): test_pitfalls.py::test_pitfall_01_usage_chunk_only_when_asked


def test_completion_stream_chunks(http):
    body = {"model": CHAT_MODEL, "prompt": "The sky is", "max_tokens": 6, "temperature": 0, "stream": True}
    chunks = [json.loads(p) for p in _events(http, "/v1/completions", body)[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]] == ["length"]
