"""Logprobs and echo over REST, against the real worker: the official `openai` client (sync and
streaming) and raw httpx for the bytes of the stream."""
from __future__ import annotations

import json
import math
from typing import Any

import openai
import pytest

from .conftest import CHAT_MODEL

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
PROMPT = "The capital of France is"


def _chat(client: openai.OpenAI, **extra: Any) -> Any:
    return client.chat.completions.create(model=CHAT_MODEL, messages=QUESTION, **{"temperature": 0, **extra})


def _completion(client: openai.OpenAI, **extra: Any) -> Any:
    return client.completions.create(model=CHAT_MODEL, prompt=PROMPT, **{"temperature": 0, **extra})


def _events(http, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON chunks of a stream, after checking its framing byte by byte."""
    with http.stream("POST", path, json={"model": CHAT_MODEL, "stream": True, **body}) as response:
        assert response.status_code == 200, response.read()
        raw = response.read().decode()
    assert raw.endswith("data: [DONE]\n\n")
    events = raw.split("\n\n")[:-2]
    assert all(e.startswith("data: {") and "\n" not in e for e in events)
    chunks = [json.loads(e[len("data: ") :]) for e in events]
    compact = [json.dumps(c, ensure_ascii=False, separators=(",", ":")) for c in chunks]
    assert [e[len("data: ") :] for e in events] == compact
    return chunks


def _error(http, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = http.post(path, json={"model": CHAT_MODEL, **body})
    assert response.status_code == 400, response.text
    return response.json()["error"]


def _check_chat_entry(entry: Any, top_count: int, greedy: bool = True) -> None:
    assert isinstance(entry.token, str) and entry.logprob <= 0
    assert bytes(entry.bytes).decode("utf-8", errors="replace") == entry.token
    assert len(entry.top_logprobs) == top_count
    values = [top.logprob for top in entry.top_logprobs]
    assert values == sorted(values, reverse=True)
    for top in entry.top_logprobs:
        assert bytes(top.bytes).decode("utf-8", errors="replace") == top.token
    if greedy and top_count:
        # Temperature 0 picks the most likely token, and logprobs are the model's own.
        assert entry.top_logprobs[0].token == entry.token and entry.top_logprobs[0].logprob == entry.logprob


# Chat.


def test_chat_logprobs_with_the_openai_client(client):
    reply = _chat(client, max_tokens=5, logprobs=True, top_logprobs=3)
    choice = reply.choices[0]
    content = choice.logprobs.content
    assert choice.logprobs.refusal is None
    # Ended by length: one entry per completion token, and together they are the text.
    assert choice.finish_reason == "length" and len(content) == reply.usage.completion_tokens == 5
    assert "".join(e.token for e in content) == choice.message.content
    assert b"".join(bytes(e.bytes) for e in content).decode() == choice.message.content
    for entry in content:
        _check_chat_entry(entry, 3)


def test_chat_logprobs_leave_out_the_eos_token(client):
    reply = _chat(client, max_tokens=60, logprobs=True)
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    content = choice.logprobs.content
    # The EOS token ends the answer, is counted in usage, but is neither text nor logprob.
    assert len(content) == reply.usage.completion_tokens - 1
    assert "".join(e.token for e in content) == choice.message.content
    assert all(e.top_logprobs == [] for e in content)


@pytest.mark.parametrize("stream", [False, True])
def test_chat_logprobs_stop_where_a_stop_string_cuts_the_text(client, stream):
    reply = _chat(client, max_tokens=20, logprobs=True, stop=[" Paris"], stream=stream)
    if stream:
        chunks = list(reply)
        content = "".join(c.choices[0].delta.content or "" for c in chunks)
        entries = [e for c in chunks if c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    else:
        content, entries = reply.choices[0].message.content, reply.choices[0].logprobs.content
    assert content == "The capital of France is"
    assert "".join(e.token for e in entries) == content


def test_chat_logprobs_off_by_default(http):
    answer = http.post("/v1/chat/completions", json={"model": CHAT_MODEL, "messages": QUESTION, "max_tokens": 3})
    assert answer.status_code == 200 and answer.json()["choices"][0]["logprobs"] is None
    chunks = _events(http, "/v1/chat/completions", {"messages": QUESTION, "max_tokens": 3})
    assert all(ch["logprobs"] is None for c in chunks for ch in c["choices"])


def test_chat_stream_logprobs_match_the_unary_answer(client):
    whole = _chat(client, max_tokens=12, logprobs=True, top_logprobs=2).choices[0]
    stream = list(_chat(client, max_tokens=12, logprobs=True, top_logprobs=2, stream=True))
    entries = []
    for chunk in stream:
        choice = chunk.choices[0]
        if choice.logprobs is not None:
            # Each chunk carries the logprobs of its own tokens.
            assert "".join(e.token for e in choice.logprobs.content) == (choice.delta.content or "")
            entries.extend(choice.logprobs.content)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == whole.message.content
    assert [(e.token, e.logprob) for e in entries] == [(e.token, e.logprob) for e in whole.logprobs.content]
    for entry in entries:
        _check_chat_entry(entry, 2)


def test_chat_logprobs_with_sampling_and_n(client):
    reply = _chat(client, max_tokens=6, logprobs=True, top_logprobs=5, temperature=1.0, seed=3, n=2)
    assert [c.index for c in reply.choices] == [0, 1]
    for choice in reply.choices:
        assert "".join(e.token for e in choice.logprobs.content) == choice.message.content
        for entry in choice.logprobs.content:
            _check_chat_entry(entry, 5, greedy=False)
            # The sampled token is at most as likely as the most likely one.
            assert entry.logprob <= entry.top_logprobs[0].logprob


# Completions.


def _check_legacy(logprobs: Any, text: str, top_count: int) -> None:
    n = len(logprobs.tokens)
    assert len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == len(logprobs.text_offset) == n
    assert "".join(logprobs.tokens) == text
    assert logprobs.text_offset == [len("".join(logprobs.tokens[:i])) for i in range(n)]
    for token, logprob, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs):
        if logprob is None:
            continue
        assert logprob <= 0 and token in top and top[token] == logprob
        assert top_count <= len(top) <= top_count + 1


def test_completion_logprobs_with_the_openai_client(client):
    reply = _completion(client, max_tokens=8, logprobs=3)
    choice = reply.choices[0]
    assert choice.finish_reason == "length" and len(choice.logprobs.tokens) == 8
    _check_legacy(choice.logprobs, choice.text, 3)
    logprobs = choice.logprobs
    for token, logprob, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs):
        # Greedy: the sampled token is the most likely of its position.
        assert len(top) == 3 and max(top.values()) == logprob and top[token] == logprob


def test_completion_logprobs_zero_has_the_sampled_token_only(client):
    logprobs = _completion(client, max_tokens=4, logprobs=0).choices[0].logprobs
    assert [list(top) for top in logprobs.top_logprobs] == [[token] for token in logprobs.tokens]


def test_completion_echo_without_logprobs(client):
    plain = _completion(client, max_tokens=6).choices[0]
    echoed = _completion(client, max_tokens=6, echo=True).choices[0]
    assert echoed.text == PROMPT + plain.text and echoed.logprobs is None


def test_completion_echo_with_logprobs(client):
    reply = _completion(client, max_tokens=5, logprobs=2, echo=True)
    choice, prompt_tokens = reply.choices[0], reply.usage.prompt_tokens
    logprobs = choice.logprobs
    assert choice.text.startswith(PROMPT)
    _check_legacy(logprobs, choice.text, 2)
    # The prompt's tokens come first; nothing precedes the first one, so it has no logprob.
    assert len(logprobs.tokens) == prompt_tokens + 5
    assert "".join(logprobs.tokens[:prompt_tokens]) == PROMPT
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert all(lp is not None and lp <= 0 for lp in logprobs.token_logprobs[1:])
    plain = _completion(client, max_tokens=5, logprobs=2).choices[0].logprobs
    assert logprobs.tokens[prompt_tokens:] == plain.tokens
    assert logprobs.token_logprobs[prompt_tokens:] == plain.token_logprobs


def test_completion_stream_logprobs(client):
    whole = _completion(client, max_tokens=8, logprobs=2, echo=True).choices[0]
    chunks = list(_completion(client, max_tokens=8, logprobs=2, echo=True, stream=True))
    tokens, token_logprobs, offsets, text = [], [], [], ""
    for chunk in chunks:
        choice = chunk.choices[0]
        assert choice.logprobs is not None
        assert "".join(choice.logprobs.tokens) == choice.text
        # Offsets count on across chunks, from the start of the choice's text.
        shown = choice.logprobs.tokens
        assert choice.logprobs.text_offset == [len(text + "".join(shown[:i])) for i in range(len(shown))]
        text += choice.text
        tokens += choice.logprobs.tokens
        token_logprobs += choice.logprobs.token_logprobs
        offsets += choice.logprobs.text_offset
    assert chunks[0].choices[0].text.startswith(PROMPT)
    assert text == whole.text
    assert tokens == whole.logprobs.tokens and token_logprobs == whole.logprobs.token_logprobs
    assert offsets == whole.logprobs.text_offset


def test_completion_logprobs_for_several_prompts_and_token_ids(client, http):
    reply = client.completions.create(
        model=CHAT_MODEL, prompt=["Hello", "One, two,"], max_tokens=3, temperature=0, logprobs=1, n=2
    )
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    for choice in reply.choices:
        _check_legacy(choice.logprobs, choice.text, 1)
    ids = http.post("/tokenize", json={"model": CHAT_MODEL, "prompt": "Hello there"}).json()["tokens"]
    echoed = client.completions.create(model=CHAT_MODEL, prompt=ids, max_tokens=2, temperature=0, logprobs=0, echo=True)
    choice = echoed.choices[0]
    assert choice.text.startswith("Hello there") and choice.logprobs.tokens[:2] == ["Hello", " there"]
    _check_legacy(choice.logprobs, choice.text, 0)


# Bytes on the wire, and errors.


def test_stream_bytes_carry_each_endpoints_logprobs(http):
    body = {"messages": QUESTION, "max_tokens": 5, "temperature": 0, "logprobs": True, "top_logprobs": 1}
    chat = _events(http, "/v1/chat/completions", body)
    opening, *middle = chat
    assert opening["choices"][0]["logprobs"] is None
    with_tokens = [ch["logprobs"] for c in middle for ch in c["choices"] if ch["logprobs"] is not None]
    assert sum(len(lp["content"]) for lp in with_tokens) == 5
    for logprobs in with_tokens:
        assert set(logprobs) == {"content", "refusal"} and logprobs["refusal"] is None
        for entry in logprobs["content"]:
            assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
            assert all(isinstance(b, int) and 0 <= b < 256 for b in entry["bytes"])
            assert [set(top) for top in entry["top_logprobs"]] == [{"token", "logprob", "bytes"}]
    legacy = _events(http, "/v1/completions", {"prompt": PROMPT, "max_tokens": 4, "temperature": 0, "logprobs": 1})
    for chunk in legacy:
        logprobs = chunk["choices"][0]["logprobs"]
        assert set(logprobs) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
        assert all(math.isfinite(lp) for lp in logprobs["token_logprobs"])


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": QUESTION, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("/v1/chat/completions", {"messages": QUESTION, "top_logprobs": 2}, "top_logprobs"),
        ("/v1/chat/completions", {"messages": QUESTION, "logprobs": False, "top_logprobs": 2}, "top_logprobs"),
        ("/v1/completions", {"prompt": PROMPT, "logprobs": 6}, "logprobs"),
        ("/v1/completions", {"prompt": PROMPT, "logprobs": -1}, "logprobs"),
        ("/v1/completions", {"prompt": PROMPT, "logprobs": 6, "stream": True}, "logprobs"),
    ],
)
def test_logprob_ranges_are_400_with_param(http, path, body, param):
    error = _error(http, path, body)
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_logprob_range_errors_through_the_openai_client(client):
    with pytest.raises(openai.BadRequestError) as caught:
        _chat(client, max_tokens=2, logprobs=True, top_logprobs=21)
    assert caught.value.param == "top_logprobs"
    with pytest.raises(openai.BadRequestError) as caught:
        _completion(client, max_tokens=2, logprobs=6)
    assert caught.value.param == "logprobs"


def test_pitfall_08_logprobs_come_in_each_endpoints_own_shape(http):
    """Chat logprobs are never completion-style; completion logprobs are never null when asked."""
    chat_keys, legacy_keys = {"content", "refusal"}, {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    chat = http.post(
        "/v1/chat/completions",
        json={"model": CHAT_MODEL, "messages": QUESTION, "max_tokens": 4, "logprobs": True, "top_logprobs": 2},
    ).json()
    assert set(chat["choices"][0]["logprobs"]) == chat_keys
    assert isinstance(chat["choices"][0]["logprobs"]["content"], list) and chat["choices"][0]["logprobs"]["content"]
    chunks = _events(http, "/v1/chat/completions", {"messages": QUESTION, "max_tokens": 4, "logprobs": True})
    shown = [ch["logprobs"] for c in chunks for ch in c["choices"] if ch["logprobs"] is not None]
    assert shown and all(set(lp) == chat_keys for lp in shown)
    for logprobs in (0, 3):
        body = {"prompt": PROMPT, "max_tokens": 4, "logprobs": logprobs, "n": 2}
        legacy = http.post("/v1/completions", json={"model": CHAT_MODEL, **body}).json()
        assert all(c["logprobs"] is not None and set(c["logprobs"]) == legacy_keys for c in legacy["choices"])
        for chunk in _events(http, "/v1/completions", body):
            assert all(ch["logprobs"] is not None and set(ch["logprobs"]) == legacy_keys for ch in chunk["choices"])


def test_text_offsets_skip_the_special_tokens_the_text_leaves_out(client):
    # A bias forces <|im_start|> (id 1), a special token: the text leaves it out by default.
    forced = dict(model=CHAT_MODEL, prompt="Hi", max_tokens=3, temperature=0, logit_bias={"1": 100}, logprobs=1)
    skipped = client.completions.create(**forced).choices[0]
    assert skipped.text == "" and skipped.logprobs.tokens == ["<|im_start|>"] * 3
    assert skipped.logprobs.text_offset == [0, 0, 0]
    kept = client.completions.create(**forced, extra_body={"skip_special_tokens": False}).choices[0]
    assert kept.text == "<|im_start|>" * 3
    _check_legacy(kept.logprobs, kept.text, 1)
