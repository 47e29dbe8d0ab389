"""Every error is an OpenAI envelope with the right status, through the real stack."""
from __future__ import annotations

import httpx
import openai
import pytest

from tests.servers import free_port, start_bridge

from .conftest import CHAT_MODEL, EMBEDDING_MODEL

HI = [{"role": "user", "content": "Hi"}]


def _envelope(response) -> dict:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["code"] is None or isinstance(error["code"], str)
    return error


def test_out_of_range_parameter_is_400_with_param(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=CHAT_MODEL, messages=HI, temperature=3)
    assert caught.value.status_code == 400 and caught.value.param == "temperature"


def test_unknown_model_is_404_model_not_found(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nobody/nothing", messages=HI)
    assert caught.value.code == "model_not_found" and caught.value.type == "invalid_request_error"


def test_context_overflow_is_400_before_any_sse_byte(http):
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hello " * 9000}], "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 400
        assert response.headers["content-type"].startswith("application/json")
        response.read()
    error = _envelope(response)
    assert error["code"] == "context_length_exceeded" and "8192" in error["message"]
    assert error["param"] == "messages"


def test_a_chat_of_megabytes_is_refused_before_it_is_tokenized(http):
    # 20 MB, under the 64 MiB body limit: tokenized, it would take many seconds.
    text = "The quick brown fox jumps over the lazy dog. " * 450_000
    response = http.post("/v1/chat/completions", json={"model": CHAT_MODEL, "messages": [{"role": "user", "content": text}]})
    assert response.status_code == 400
    error = _envelope(response)
    assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")
    assert "at least" in error["message"]  # a lower bound of the rendered chat, not a count of its tokens


def test_max_tokens_beyond_context_is_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=9000)
    assert caught.value.code == "context_length_exceeded"


def test_embeddings_on_a_generation_model_is_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=CHAT_MODEL, input="hello")
    assert caught.value.param == "model"


def test_chat_on_an_embedding_model_is_400(client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=EMBEDDING_MODEL, messages=HI)


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": CHAT_MODEL}, "messages"),
        ({"model": CHAT_MODEL, "messages": []}, "messages"),
        ({"model": CHAT_MODEL, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": CHAT_MODEL, "messages": HI, "top_p": 0}, "top_p"),
        ({"model": CHAT_MODEL, "messages": HI, "n": 0}, "n"),
        # Known fields take JSON types strictly (true is not 1, "5" is not 5) ...
        ({"model": CHAT_MODEL, "messages": HI, "max_tokens": True}, "max_tokens"),
        ({"model": CHAT_MODEL, "messages": HI, "n": True}, "n"),
        ({"model": CHAT_MODEL, "messages": HI, "seed": True}, "seed"),
        ({"model": CHAT_MODEL, "messages": HI, "logprobs": True, "top_logprobs": True}, "top_logprobs"),
        ({"model": CHAT_MODEL, "messages": HI, "max_tokens": "5"}, "max_tokens"),
        # ... and OpenAI's other rules.
        ({"model": CHAT_MODEL, "messages": HI, "stream_options": {"include_usage": True}}, "stream_options"),
        ({"model": CHAT_MODEL, "messages": HI, "tools": []}, "tools"),
        ({"model": CHAT_MODEL, "messages": [*HI, {"role": "tool", "content": "4"}]}, "messages[1].tool_call_id"),
        ({"model": CHAT_MODEL, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
         "messages[0].content[0].text"),
    ],
)
def test_invalid_bodies_are_400_never_422(http, body, param):
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = _envelope(response)
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert param.split("[")[0].split(".")[0] in error["message"]


def test_deeply_nested_json_is_a_400_not_a_crash(http):
    deep = '{"model": "%s", "messages": %s}' % (CHAT_MODEL, "[" * 1000 + "]" * 1000)
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/tokenize", "/detokenize"):
        response = http.post(path, content=deep, headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text
        error = _envelope(response)
        assert (error["type"], error["param"]) == ("invalid_request_error", None)
        assert "could not parse the JSON body" in error["message"]


def test_a_trailing_slash_is_a_404_envelope_not_an_empty_redirect(http):
    for method, path in (("POST", "/v1/chat/completions/"), ("POST", "/v1/embeddings/"), ("GET", "/health/")):
        response = http.request(method, path, json={"model": CHAT_MODEL, "messages": HI})
        assert response.status_code == 404, (path, response.status_code)
        error = _envelope(response)
        assert error["message"] == f"Unknown request URL: {method} {path}." and error["param"] is None


def test_framework_level_errors_use_the_envelope(http):
    malformed = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert malformed.status_code == 400 and _envelope(malformed)["type"] == "invalid_request_error"
    unknown = http.get("/v1/nothing-here")
    assert unknown.status_code == 404 and _envelope(unknown)
    wrong_method = http.get("/v1/chat/completions")
    assert wrong_method.status_code == 405 and _envelope(wrong_method)


def test_request_timeout_is_504_and_named_timeout(tmp_path, worker_address):
    url, bridge = start_bridge(tmp_path, worker_address, "--request-timeout", "1")
    try:
        body = {"model": CHAT_MODEL, "messages": HI, "max_tokens": 3000, "ignore_eos": True}
        response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
        assert response.status_code == 504 and _envelope(response)["type"] == "timeout"
    finally:
        bridge.stop()


def test_unreachable_worker_is_503(tmp_path):
    url, bridge = start_bridge(tmp_path, f"127.0.0.1:{free_port()}")
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=30)
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model=CHAT_MODEL, messages=HI)
        assert caught.value.status_code == 503 and caught.value.type == "server_error"
        assert httpx.get(f"{url}/health").status_code == 503
    finally:
        bridge.stop()
