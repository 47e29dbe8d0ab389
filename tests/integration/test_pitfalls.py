"""The "known pitfalls of existing servers" (docs/openai-contract.md), one test each, through the
real bridge and worker.

Pitfall → test:
 1. usage chunk only when asked ........ test_pitfall_01_usage_chunk_only_when_asked (here)
 2. tool-call deltas ................... tests of tool calling (not here)
 3. finish_reason ...................... test_pitfall_03_finish_reason_is_stop_or_length (here;
                                         `tool_calls` with the tests of tool calling)
 4. error envelopes .................... test_pitfall_04_every_error_is_an_envelope (here)
 5. context overflow ................... test_errors.py::test_context_overflow_is_400_before_any_sse_byte
 6. stop strings split across tokens ... test_chat.py::test_stop_strings_cut_the_text_also_across_tokens
 7. n > 1 .............................. test_chat.py::test_n_choices_in_stream_and_not
 8. logprobs shapes .................... tests of logprobs (not here)
 9. client disconnect .................. test_capacity.py::test_disconnected_stream_frees_the_only_slot
10. SSE framing ........................ test_sse.py::test_chat_stream_framing_and_chunk_order
11. embeddings in base64 ............... test_embeddings.py::test_base64_decodes_to_the_same_floats
12. parameter ranges and semantics ..... test_pitfall_12_parameter_ranges_and_penalty_semantics (here)
13. ids and created .................... test_pitfall_13_ids_unique_and_created_constant (here)
14. unknown and known fields ........... test_pitfall_14_unknown_fields_ignored_known_never_dropped (here)
15. hanging requests ................... test_pitfall_15_bad_requests_fail_fast (here)
"""
from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tokenwire.v1 import generation_pb2

from .conftest import CHAT_MODEL, EMBEDDING_MODEL

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HI = [{"role": "user", "content": "Name two planets."}]


def _sse_chunks(http: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON chunks of a stream, checked to end with `data: [DONE]`."""
    with http.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200
        raw = response.read().decode()
    events = raw.split("\n\n")[:-1]
    assert events[-1] == "data: [DONE]"
    return [json.loads(event.removeprefix("data: ")) for event in events[:-1]]


def _envelope(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"] and list(body["error"]) == ["message", "type", "param", "code"]
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert error["code"] is None or isinstance(error["code"], str)
    assert error["param"] is None or isinstance(error["param"], str)
    return error


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CHAT, {"model": CHAT_MODEL, "messages": HI, "max_tokens": 5, "temperature": 0, "n": 2}),
        (COMPLETIONS, {"model": CHAT_MODEL, "prompt": ["The sky is", "Grass is"], "max_tokens": 5, "temperature": 0}),
    ],
)
def test_pitfall_01_usage_chunk_only_when_asked(http, path, body):
    for options in (None, {"include_usage": False}):
        chunks = _sse_chunks(http, path, {**body, **({"stream_options": options} if options else {})})
        assert all(chunk["choices"] for chunk in chunks), "a chunk without choices"
        assert all(chunk.get("usage") is None for chunk in chunks), "usage sent without being asked"
    chunks = _sse_chunks(http, path, {**body, "stream_options": {"include_usage": True}})
    *content, last = chunks
    assert last["choices"] == [] and all(chunk["choices"] for chunk in content)
    assert all("usage" in chunk and chunk["usage"] is None for chunk in content)
    usage = last["usage"]
    assert usage["completion_tokens"] == 5 * 2  # two choices (n=2, or two prompts) of 5 tokens
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    unary = http.post(path, json=body).json()["usage"]
    assert unary["prompt_tokens"] == usage["prompt_tokens"]


def test_pitfall_03_finish_reason_is_stop_or_length(client, http):
    """`stop` for EOS, a stop string or a stop token; `length` for max_tokens; never another
    value, streamed or not, chat or completions."""
    short = [{"role": "user", "content": "What is the capital of France?"}]
    eos = client.chat.completions.create(model=CHAT_MODEL, messages=short, temperature=0, max_tokens=30)
    assert eos.choices[0].finish_reason == "stop" and eos.usage.completion_tokens < 30
    five = http.post("/tokenize", json={"model": CHAT_MODEL, "prompt": " five", "add_special_tokens": False})
    cases = [
        ({"messages": short}, "stop"),
        ({"messages": short, "stop": " is"}, "stop"),
        ({"messages": HI, "max_tokens": 3}, "length"),
        ({"prompt": "One, two, three,", "max_tokens": 3}, "length"),
        ({"prompt": "One, two, three,", "stop": [","]}, "stop"),
        ({"prompt": "One, two, three,", "stop_token_ids": five.json()["tokens"]}, "stop"),
    ]
    for extra, reason in cases:
        path = CHAT if "messages" in extra else COMPLETIONS
        body = {"model": CHAT_MODEL, "temperature": 0, "max_tokens": 30, **extra}
        choice = http.post(path, json=body).json()["choices"][0]
        assert choice["finish_reason"] == reason, (extra, choice)
        reasons = [c["finish_reason"] for chunk in _sse_chunks(http, path, body) for c in chunk["choices"]]
        assert [r for r in reasons if r is not None] == [reason], (extra, reasons)


def test_pitfall_04_every_error_is_an_envelope(http, secured_stack):
    """Enveloped bodies with string-or-null codes: validation is 400 (never 422 or 500), and a
    401 has a body too."""
    cases = [
        (http.post(CHAT, json={"model": CHAT_MODEL, "messages": HI, "temperature": "hot"}), 400, "temperature"),
        (http.post(CHAT, json={"model": CHAT_MODEL, "messages": "hello"}), 400, "messages"),
        (http.post(CHAT, json={"model": CHAT_MODEL}), 400, "messages"),
        (http.post(COMPLETIONS, json={"model": CHAT_MODEL, "prompt": "x", "max_tokens": -1}), 400, "max_tokens"),
        (http.post("/v1/embeddings", json={"model": EMBEDDING_MODEL, "input": "x", "dimensions": 0}), 400,
         "dimensions"),
        (http.post(CHAT, content=b"{nope", headers={"content-type": "application/json"}), 400, None),
        (http.post(CHAT, json={"model": "nobody/nothing", "messages": HI}), 404, "model"),
        (http.get("/v1/no-such-route"), 404, None),
        (http.delete("/v1/models"), 405, None),
        (httpx.get(f"{secured_stack.url}/v1/models", timeout=10), 401, None),
    ]
    for response, status, param in cases:
        assert response.status_code == status, response.text
        error = _envelope(response)
        assert error["param"] == param, error
    assert _envelope(cases[6][0])["code"] == "model_not_found"
    assert _envelope(cases[-1][0])["code"] == "invalid_api_key"


def test_pitfall_12_parameter_ranges_and_penalty_semantics(client, http, stub):
    """Edge values are accepted, `stop` may be a bare string, out-of-range values are a 400 naming
    the parameter, and each penalty reaches the worker as the same penalty, unscaled."""
    edges = {"temperature": 2, "top_p": 1.0, "min_p": 1.0, "top_k": 999, "presence_penalty": -2,
             "frequency_penalty": 2, "repetition_penalty": 5, "stop": "zzz", "seed": -1}
    for name, value in edges.items():
        reply = http.post(CHAT, json={"model": CHAT_MODEL, "messages": HI, "max_tokens": 2, name: value})
        assert reply.status_code == 200, (name, reply.text)
    beyond = {"temperature": 2.01, "top_p": 0, "min_p": 1.01, "top_k": 1000, "presence_penalty": 2.01,
              "frequency_penalty": -2.01, "repetition_penalty": 0, "n": 129}
    for name, value in beyond.items():
        reply = http.post(CHAT, json={"model": CHAT_MODEL, "messages": HI, "max_tokens": 2, name: value})
        assert reply.status_code == 400 and _envelope(reply)["param"] == name, (name, reply.text)

    prompt = "List of fruits: apple, banana, apple, banana, apple,"

    def native(**penalties: float) -> str:
        request = generation_pb2.GenerateRequest(
            model=CHAT_MODEL, text=prompt, sampling=generation_pb2.SamplingParams(temperature=0),
            penalties=generation_pb2.PenaltyParams(**penalties),
            stopping=generation_pb2.StoppingCriteria(max_new_tokens=12),
        )
        return stub.Generate(request).sequences[0].text

    def rest(**penalties: float) -> str:
        body = {"model": CHAT_MODEL, "prompt": prompt, "temperature": 0, "max_tokens": 12, **penalties}
        return http.post(COMPLETIONS, json=body).json()["choices"][0]["text"]

    plain = rest()
    assert plain == native()
    for name in ("presence_penalty", "frequency_penalty", "repetition_penalty"):
        penalized = rest(**{name: 1.5})
        assert penalized == native(**{name: 1.5}), name
        assert penalized != plain, f"{name} had no effect"
    # OpenAI's presence and frequency penalties count generated tokens only, so the first
    # token is unchanged; the multiplicative repetition penalty counts the prompt too.
    first = client.completions.create(model=CHAT_MODEL, prompt=prompt, temperature=0, max_tokens=1).choices[0].text
    assert rest(presence_penalty=2).startswith(first) and rest(frequency_penalty=2).startswith(first)
    assert not rest(repetition_penalty=1.5).startswith(first)


def test_pitfall_13_ids_unique_and_created_constant(client):
    """Every response has its own non-empty id; a stream keeps one id and one `created`."""
    ids = []
    for _ in range(2):
        reply = client.chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=2)
        completion = client.completions.create(model=CHAT_MODEL, prompt="Hi", max_tokens=2)
        assert reply.id.startswith("chatcmpl-") and completion.id.startswith("cmpl-")
        assert isinstance(reply.created, int) and isinstance(completion.created, int)
        ids += [reply.id, completion.id]
        for stream in (
            client.chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=6, n=2, stream=True),
            client.completions.create(model=CHAT_MODEL, prompt=["Hi", "Yo"], max_tokens=6, stream=True),
        ):
            chunks = list(stream)
            assert len({chunk.id for chunk in chunks}) == 1 and len({chunk.created for chunk in chunks}) == 1
            ids.append(chunks[0].id)
    assert all(len(i) > len("chatcmpl-") for i in ids) and len(set(ids)) == len(ids)


def test_pitfall_14_unknown_fields_ignored_known_never_dropped(http):
    unknown = {"model": CHAT_MODEL, "messages": HI, "max_tokens": 2, "x_vendor_flag": True, "user": "u-1",
               "metadata_that_nobody_knows": {"a": 1}}
    assert http.post(CHAT, json=unknown).status_code == 200
    # A known field is honoured (max_completion_tokens is OpenAI's newer name of max_tokens) ...
    newer = {"model": CHAT_MODEL, "messages": HI, "max_completion_tokens": 3, "ignore_eos": True}
    assert http.post(CHAT, json=newer).json()["usage"]["completion_tokens"] == 3
    # ... or refused by name when it is not implemented, never silently dropped.
    refused = [
        (COMPLETIONS, {"prompt": "x", "suffix": "!"}, "suffix"),
        (COMPLETIONS, {"prompt": "x", "n": 1, "best_of": 3}, "best_of"),
        (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, None),
    ]
    for path, body, param in refused:
        reply = http.post(path, json={"model": CHAT_MODEL, **body})
        assert reply.status_code == 400, reply.text
        error = _envelope(reply)
        assert param is None or error["param"] == param
        assert "not supported" in error["message"]


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS, "/v1/embeddings", "/tokenize", "/detokenize"])
def test_pitfall_15_bad_requests_fail_fast(bridge_url, path):
    """Malformed or incomplete bodies are answered at once (400), never left hanging."""
    bodies = [b"", b"{", b'{"model": "m"', b"{}", b'{"model": null}', b"[]", b"null", b'{"model": "m", "x": NaN}']
    with httpx.Client(base_url=bridge_url, timeout=httpx.Timeout(10.0)) as quick:
        for body in bodies:
            reply = quick.post(path, content=body, headers={"content-type": "application/json"})
            assert reply.status_code == 400, (body, reply.text)
            _envelope(reply)
        missing = quick.post(path, json={"model": CHAT_MODEL})
        assert missing.status_code == 400 and _envelope(missing)["message"]
