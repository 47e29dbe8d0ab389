"""POST /tokenize and POST /detokenize (vLLM's shapes) through the real stack."""
from __future__ import annotations

from .conftest import CHAT_MODEL, EMBEDDING_MODEL
from .test_tools import TOOLS

HI = [{"role": "user", "content": "What is 2+2?"}]


def test_tokenize_text_and_detokenize_back(http):
    reply = http.post("/tokenize", json={"model": CHAT_MODEL, "prompt": "Hello world", "return_token_strs": True})
    assert reply.status_code == 200
    body = reply.json()
    assert body["count"] == len(body["tokens"]) == len(body["token_strs"]) >= 2
    assert body["max_model_len"] == 8192 and body["token_strs"][0] == "Hello"
    back = http.post("/detokenize", json={"model": CHAT_MODEL, "tokens": body["tokens"]})
    assert back.status_code == 200 and back.json() == {"prompt": "Hello world"}
    # Without a model, the first generation model answers; token strings only when asked.
    default = http.post("/tokenize", json={"prompt": "Hello world"}).json()
    assert default["tokens"] == body["tokens"] and default["token_strs"] is None


def test_detokenize_keeps_special_tokens_unless_asked_to_skip_them(http):
    start, end = (
        http.post("/tokenize", json={"model": CHAT_MODEL, "prompt": marker, "add_special_tokens": False}).json()["tokens"]
        for marker in ("<|im_start|>", "<|im_end|>")
    )
    hi = http.post("/tokenize", json={"model": CHAT_MODEL, "prompt": "hi", "add_special_tokens": False}).json()["tokens"]
    tokens = start + hi + end
    body = {"model": CHAT_MODEL, "tokens": tokens}
    # Like vLLM's /detokenize (and the gRPC Detokenize), special tokens are kept by default.
    assert http.post("/detokenize", json=body).json() == {"prompt": "<|im_start|>hi<|im_end|>"}
    assert http.post("/detokenize", json={**body, "skip_special_tokens": False}).json() == {
        "prompt": "<|im_start|>hi<|im_end|>"
    }
    assert http.post("/detokenize", json={**body, "skip_special_tokens": True}).json() == {"prompt": "hi"}
    wrong = http.post("/detokenize", json={**body, "skip_special_tokens": "yes"})
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "skip_special_tokens"


def test_tokenize_chat_counts_the_prompt_the_model_sees(http, client):
    with_prompt = http.post("/tokenize", json={"model": CHAT_MODEL, "messages": HI}).json()
    without = http.post("/tokenize", json={"model": CHAT_MODEL, "messages": HI, "add_generation_prompt": False}).json()
    assert with_prompt["count"] > without["count"]
    assert with_prompt["tokens"][: without["count"]] == without["tokens"]
    reply = client.chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=1)
    assert reply.usage.prompt_tokens == with_prompt["count"]


def test_tokenize_chat_with_tools_counts_what_a_completion_with_them_sees(http, client):
    plain = http.post("/tokenize", json={"model": CHAT_MODEL, "messages": HI}).json()
    with_tools = http.post("/tokenize", json={"model": CHAT_MODEL, "messages": HI, "tools": TOOLS[:1]}).json()
    assert with_tools["count"] > plain["count"]
    reply = client.chat.completions.create(model=CHAT_MODEL, messages=HI, tools=TOOLS[:1], max_tokens=1)
    assert reply.usage.prompt_tokens == with_tools["count"]
    text = http.post("/tokenize", json={"model": CHAT_MODEL, "prompt": "hi", "tools": TOOLS[:1]})
    assert text.status_code == 400 and text.json()["error"]["param"] == "tools"


def test_embedding_model_tokenizer_and_special_tokens(http):
    body = {"model": EMBEDDING_MODEL, "prompt": "Hello world", "return_token_strs": True}
    special = http.post("/tokenize", json=body).json()
    assert special["token_strs"] == ["[CLS]", "hello", "world", "[SEP]"] and special["max_model_len"] == 256
    plain = http.post("/tokenize", json={**body, "add_special_tokens": False}).json()
    assert plain["tokens"] == special["tokens"][1:-1]
    assert http.post("/detokenize", json={"model": EMBEDDING_MODEL, "tokens": plain["tokens"]}).json() == {
        "prompt": "hello world"
    }


def test_tokenize_errors(http):
    unknown = http.post("/tokenize", json={"model": "nobody/nothing", "prompt": "x"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    outside = http.post("/detokenize", json={"model": CHAT_MODEL, "tokens": [10**8]})
    assert outside.status_code == 400 and outside.json()["error"]["param"] == "tokens"
    both = http.post("/tokenize", json={"model": CHAT_MODEL, "prompt": "x", "messages": HI})
    assert both.status_code == 400 and both.json()["error"]["param"] == "prompt"
