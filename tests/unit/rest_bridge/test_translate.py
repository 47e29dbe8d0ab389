"""OpenAI ⇄ protobuf mappings, without any server."""
from __future__ import annotations

import base64
import struct
from typing import Any

import pytest

from rest_bridge import translate
from rest_bridge.errors import openai_param
from rest_bridge.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    TokenizeRequest,
)
from tokenwire.v1 import common_pb2, embedding_pb2, generation_pb2, models_pb2, tokenization_pb2

USER = [{"role": "user", "content": "hi"}]
HEADER = translate.ResponseHeader(id="chatcmpl-1", created=1700000000, model="org/name:v1")


def chat_proto(**fields: Any) -> generation_pb2.GenerateRequest:
    return translate.chat_request(ChatCompletionRequest.model_validate({"messages": USER, **fields}), "req-1")


def test_unset_fields_stay_unset() -> None:
    request = chat_proto(model="org/name")
    assert request.model == "org/name"
    assert request.request_id == "req-1"
    assert request.WhichOneof("prompt") == "chat"
    for group in ("sampling", "penalties", "stopping", "response"):
        assert not request.HasField(group), group
    assert not request.chat.HasField("add_generation_prompt")


def test_zero_values_are_sent_not_dropped() -> None:
    request = chat_proto(temperature=0, top_k=0, min_p=0, presence_penalty=0, seed=0, skip_special_tokens=False)
    for field in ("temperature", "top_k", "min_p", "seed"):
        assert request.sampling.HasField(field), field
    assert request.sampling.temperature == 0
    assert not request.sampling.HasField("top_p")
    assert request.penalties.HasField("presence_penalty")
    assert not request.penalties.HasField("frequency_penalty")
    assert request.response.HasField("skip_special_tokens") and not request.response.skip_special_tokens


def test_every_parameter_is_mapped() -> None:
    request = chat_proto(
        model="m",
        n=3,
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        min_p=0.05,
        seed=-1,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        repetition_penalty=1.2,
        logit_bias={"7": -100, "9": 5.5},
        max_tokens=64,
        min_tokens=2,
        stop=["a", "b"],
        stop_token_ids=[2],
        include_stop_str_in_output=True,
        ignore_eos=True,
        add_generation_prompt=False,
    )
    sampling, penalties, stopping = request.sampling, request.penalties, request.stopping
    assert (sampling.n, sampling.top_k, sampling.seed) == (3, 40, 2**64 - 1)
    assert sampling.temperature == pytest.approx(0.5) and sampling.top_p == pytest.approx(0.9)
    assert sampling.min_p == pytest.approx(0.05)
    assert penalties.presence_penalty == pytest.approx(0.5)
    assert penalties.frequency_penalty == pytest.approx(-0.5)
    assert penalties.repetition_penalty == pytest.approx(1.2)
    assert dict(penalties.logit_bias) == {7: -100.0, 9: 5.5}
    assert (stopping.max_new_tokens, stopping.min_new_tokens) == (64, 2)
    assert list(stopping.stop) == ["a", "b"] and list(stopping.stop_token_ids) == [2]
    assert stopping.include_stop_string and stopping.ignore_eos
    assert request.chat.HasField("add_generation_prompt") and not request.chat.add_generation_prompt


def test_priority_is_sent_when_given() -> None:
    assert chat_proto(priority=-4).priority == -4 and not chat_proto().HasField("priority")
    body = CompletionRequest.model_validate({"prompt": ["a", "b"], "priority": 7})
    assert [request.priority for request in translate.completion_requests(body, "r")] == [7, 7]
    assert translate.embed_request(EmbeddingRequest.model_validate({"input": "a", "priority": 3}), "r").priority == 3
    assert not translate.embed_request(EmbeddingRequest.model_validate({"input": "a"}), "r").HasField("priority")


def test_max_completion_tokens_is_max_tokens() -> None:
    assert chat_proto(max_completion_tokens=12).stopping.max_new_tokens == 12


def test_chat_messages_with_tool_calls() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}
    request = chat_proto(
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42", "name": "f"},
        ]
    )
    system, assistant, tool = request.chat.messages
    assert (system.role, system.content) == ("system", "be brief")
    assert assistant.content == "" and assistant.tool_calls[0].function.arguments == '{"x":1}'
    assert (assistant.tool_calls[0].id, assistant.tool_calls[0].type) == ("call_1", "function")
    assert (tool.role, tool.tool_call_id, tool.name, tool.content) == ("tool", "call_1", "f", "42")


def test_one_completion_request_per_prompt() -> None:
    body = CompletionRequest.model_validate({"model": "m", "prompt": [[1, 2], [3]], "n": 2, "temperature": 0.1})
    requests = translate.completion_requests(body, "req-2")
    assert [r.WhichOneof("prompt") for r in requests] == ["token_ids", "token_ids"]
    assert [list(r.token_ids.ids) for r in requests] == [[1, 2], [3]]
    assert all(r.sampling.n == 2 and r.model == "m" and r.request_id == "req-2" for r in requests)
    (empty,) = translate.completion_requests(CompletionRequest.model_validate({"prompt": ""}), "r")
    assert empty.WhichOneof("prompt") == "text" and empty.text == ""


def test_embed_request() -> None:
    body = EmbeddingRequest.model_validate({"model": "e", "input": ["a", "b"], "encoding_format": "base64"})
    request = translate.embed_request(body, "req-3")
    assert [i.text for i in request.inputs] == ["a", "b"]
    assert request.encoding == embedding_pb2.EMBEDDING_ENCODING_PACKED_FLOAT32
    assert not request.HasField("dimensions") and not request.HasField("normalize")
    body = EmbeddingRequest.model_validate({"input": [[5, 6]], "dimensions": 8})
    request = translate.embed_request(body, "req-4")
    assert list(request.inputs[0].token_ids.ids) == [5, 6]
    assert request.encoding == embedding_pb2.EMBEDDING_ENCODING_FLOAT and request.dimensions == 8


def test_tokenize_requests() -> None:
    text = translate.tokenize_request(TokenizeRequest.model_validate({"prompt": "abc"}))
    assert text.text == "abc" and not text.HasField("add_special_tokens")
    chat = translate.tokenize_request(
        TokenizeRequest.model_validate({"messages": USER, "add_special_tokens": False, "return_token_strs": True})
    )
    assert chat.chat.messages[0].content == "hi" and chat.HasField("add_special_tokens") and chat.return_tokens


@pytest.mark.parametrize("skip", [None, True, False])
def test_detokenize_request_passes_skip_special_tokens_when_sent(skip: bool | None) -> None:
    body = DetokenizeRequest.model_validate({"model": "m", "tokens": [1, 2], "skip_special_tokens": skip})
    request = translate.detokenize_request(body)
    assert (request.model, list(request.token_ids)) == ("m", [1, 2])
    # Unset keeps the worker's default (special tokens kept, as vLLM's /detokenize keeps them).
    assert request.HasField("skip_special_tokens") == (skip is not None)
    assert request.skip_special_tokens == bool(skip)


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (generation_pb2.FINISH_REASON_STOP, "stop"),
        (generation_pb2.FINISH_REASON_LENGTH, "length"),
        (generation_pb2.FINISH_REASON_CONTEXT_LENGTH, "length"),
        (generation_pb2.FINISH_REASON_TIME_LIMIT, "length"),
        (generation_pb2.FINISH_REASON_ABORTED, "stop"),
    ],
)
def test_finish_reasons(reason: int, expected: str) -> None:
    assert translate.finish_reason(generation_pb2.FinishInfo(reason=reason)) == expected


def generate_response(texts: list[str], prompt_tokens: int = 5) -> generation_pb2.GenerateResponse:
    finish = generation_pb2.FinishInfo(reason=generation_pb2.FINISH_REASON_LENGTH)
    return generation_pb2.GenerateResponse(
        prompt_info=generation_pb2.PromptInfo(model="org/name"),
        # Out of order on purpose: the answer is ordered by index.
        sequences=[
            generation_pb2.Sequence(index=i, text=t, finish=finish) for i, t in reversed(list(enumerate(texts)))
        ],
        usage=common_pb2.Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=2 * len(texts),
            total_tokens=prompt_tokens + 2 * len(texts),
            cached_tokens=1,
            estimated_cost=0.25,
        ),
    )


def test_chat_completion_shape() -> None:
    answer = translate.generation_response(translate.CHAT, [generate_response(["a", "b"])], 2, HEADER)
    assert answer == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "org/name:v1",
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "length",
            }
            for i, text in enumerate("ab")
        ],
        "usage": {
            "prompt_tokens": 5,
            "completion_tokens": 4,
            "total_tokens": 9,
            "prompt_tokens_details": {"cached_tokens": 1},
            "estimated_cost": 0.25,
        },
    }


def test_completion_indices_over_several_prompts() -> None:
    responses = [generate_response(["p0s0", "p0s1"], 3), generate_response(["p1s0", "p1s1"], 4)]
    answer = translate.generation_response(translate.COMPLETION, responses, 2, HEADER)
    assert answer["object"] == "text_completion"
    choices = answer["choices"]
    assert [(c["index"], c["text"]) for c in choices] == [(0, "p0s0"), (1, "p0s1"), (2, "p1s0"), (3, "p1s1")]
    assert all(set(c) == {"index", "text", "logprobs", "finish_reason"} and c["logprobs"] is None for c in choices)
    assert answer["usage"]["prompt_tokens"] == 7 and answer["usage"]["total_tokens"] == 15
    assert answer["usage"]["estimated_cost"] == 0.5


def test_stream_chunks() -> None:
    assert translate.stream_chunk(translate.CHAT, HEADER, [translate.CHAT.opening_choice(1)], False) == {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "org/name:v1",
        "choices": [
            {"index": 1, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        ],
    }
    last = translate.stream_chunk(translate.CHAT, HEADER, [translate.CHAT.chunk_choice(0, "", "stop")], True)
    assert last["choices"][0]["delta"] == {} and last["usage"] is None
    usage = translate.stream_chunk(translate.COMPLETION, HEADER, [], True, common_pb2.Usage(total_tokens=3))
    assert usage["object"] == "text_completion" and usage["choices"] == [] and usage["usage"]["total_tokens"] == 3
    text = translate.COMPLETION.chunk_choice(4, "hi", None)
    assert text == {"index": 4, "text": "hi", "logprobs": None, "finish_reason": None}
    assert translate.COMPLETION.opening_choice is None


def test_embeddings_float_and_base64() -> None:
    response = embedding_pb2.EmbedResponse(
        model="canonical",
        embeddings=[
            embedding_pb2.EmbeddingVector(index=1, values=[0.5], packed=struct.pack("<f", 0.5)),
            embedding_pb2.EmbeddingVector(index=0, values=[-1.0], packed=struct.pack("<f", -1.0)),
        ],
        usage=common_pb2.Usage(prompt_tokens=3, total_tokens=3),
    )
    floats = translate.embedding_response(response, "asked", "float")
    assert floats == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [-1.0]},
            {"object": "embedding", "index": 1, "embedding": [0.5]},
        ],
        "model": "asked",
        "usage": {"prompt_tokens": 3, "total_tokens": 3, "estimated_cost": 0.0},
    }
    encoded = translate.embedding_response(response, "asked", "base64")["data"]
    assert [struct.unpack("<f", base64.b64decode(d["embedding"]))[0] for d in encoded] == [-1.0, 0.5]


def test_models_and_tokens() -> None:
    info = models_pb2.ModelInfo(
        id="org/name", created=12, version="abc123", deploy_id="d1",
        kind=models_pb2.MODEL_KIND_GENERATION, context_length=4096,
    )
    assert translate.models_list(models_pb2.ListModelsResponse(models=[info])) == {
        "object": "list",
        "data": [{
            "id": "org/name", "object": "model", "created": 12, "owned_by": "tokenwire",
            "version": "abc123", "deploy_id": "d1", "kind": "generation", "context_length": 4096,
        }],
    }
    tokens = tokenization_pb2.TokenizeResponse(token_ids=[1, 2], tokens=["a", "b"], context_length=2048)
    assert translate.tokenize_response(tokens, False) == {
        "count": 2, "max_model_len": 2048, "tokens": [1, 2], "token_strs": None
    }
    assert translate.tokenize_response(tokens, True)["token_strs"] == ["a", "b"]
    assert translate.detokenize_response(tokenization_pb2.DetokenizeResponse(text="ab")) == {"prompt": "ab"}


def test_response_header_ids() -> None:
    first, second = translate.ResponseHeader.new("chatcmpl", "m"), translate.ResponseHeader.new("chatcmpl", "m")
    assert first.id.startswith("chatcmpl-") and len(first.id) == len("chatcmpl-") + 32
    assert first.id != second.id and isinstance(first.created, int)


@pytest.mark.parametrize(
    ("field", "params", "param"),
    [
        ("prompt", translate.CHAT_PARAMS, "messages"),
        ("prompt", translate.COMPLETION_PARAMS, "prompt"),
        ("chat.messages[2].role", translate.CHAT_PARAMS, "messages[2].role"),
        ("stopping.max_new_tokens", translate.CHAT_PARAMS, "max_tokens"),
        ("sampling.temperature", translate.COMPLETION_PARAMS, "temperature"),
        ("penalties.repetition_penalty", translate.CHAT_PARAMS, "repetition_penalty"),
        ("inputs", translate.EMBEDDING_PARAMS, "input"),
        ("inputs[3]", translate.EMBEDDING_PARAMS, "input[3]"),
        ("token_ids", translate.DETOKENIZE_PARAMS, "tokens"),
        ("model", translate.EMBEDDING_PARAMS, "model"),
        ("something.else", translate.CHAT_PARAMS, "something.else"),
        ("modelx", translate.CHAT_PARAMS, "modelx"),
    ],
)
def test_proto_field_paths_map_to_openai_params(field: str, params: dict[str, str], param: str) -> None:
    assert openai_param(field, params) == param
