"""Request validation: ranges, normalization, unknown fields, and features rejected until implemented."""
from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from rest_bridge.errors import APIError, from_validation_error
from rest_bridge.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, TokenizeRequest

USER = [{"role": "user", "content": "hi"}]


def rejection(schema: type[BaseModel], body: dict[str, Any]) -> APIError:
    with pytest.raises(ValidationError) as caught:
        schema.model_validate(body)
    return from_validation_error(caught.value)


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": USER, **fields}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": 2.01}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"min_p": 1.5}, "min_p"),
        ({"top_k": 1000}, "top_k"),
        ({"top_k": -1}, "top_k"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"repetition_penalty": 5.1}, "repetition_penalty"),
        ({"n": 0}, "n"),
        ({"n": 129}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"logit_bias": {"5": 101}}, "logit_bias.5"),
        ({"logit_bias": {"abc": 1}}, "logit_bias.abc"),
        ({"stop": 5}, "stop"),
        ({"stop": ["a", 5]}, "stop[1]"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0]"),
        ({"messages": [{"role": "system"}, {"role": "user", "content": "x"}]}, "messages[0]"),
        ({"stop_token_ids": [-1]}, "stop_token_ids[0]"),
        ({"priority": 2**31}, "priority"),
        ({"priority": -(2**31) - 1}, "priority"),
    ],
)
def test_out_of_range_values_name_the_param(fields: dict[str, Any], param: str) -> None:
    error = rejection(ChatCompletionRequest, chat(**fields))
    assert (error.status, error.param, error.type) == (400, param, "invalid_request_error")
    assert param.split(".")[0].split("[")[0] in error.message


def test_missing_messages() -> None:
    error = rejection(ChatCompletionRequest, {"model": "m"})
    assert error.param == "messages"
    assert error.message == "Missing required parameter: 'messages'."


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature": 0, "top_p": 1.0, "top_k": 0, "min_p": 0, "n": 128, "repetition_penalty": 0.01},
        {"temperature": 2, "presence_penalty": -2, "frequency_penalty": 2, "repetition_penalty": 5},
        {"stop": "\n"},
        {"seed": -1, "user": "u", "logit_bias": {"42": -100}},
        {"tool_choice": "none", "tools": [{"type": "function", "function": {"name": "f"}}]},
        {"response_format": {"type": "text"}, "logprobs": False, "top_logprobs": 0},
        {"something_new": {"nested": True}, "service_tier": "auto"},
    ],
)
def test_valid_edges_and_unknown_fields_are_accepted(fields: dict[str, Any]) -> None:
    ChatCompletionRequest.model_validate(chat(**fields))


@pytest.mark.parametrize(
    ("fields", "param", "kind"),
    [
        ({"max_tokens": True}, "max_tokens", "integer"),
        ({"max_completion_tokens": False}, "max_completion_tokens", "integer"),
        ({"n": True}, "n", "integer"),
        ({"logprobs": True, "top_logprobs": True}, "top_logprobs", "integer"),
        ({"seed": True}, "seed", "integer"),
        ({"top_k": True}, "top_k", "integer"),
        ({"min_tokens": True}, "min_tokens", "integer"),
        ({"stop_token_ids": [True]}, "stop_token_ids[0]", "integer"),
        ({"max_tokens": "5"}, "max_tokens", "integer"),
        ({"seed": "1"}, "seed", "integer"),
        ({"max_tokens": 5.5}, "max_tokens", "integer"),
        ({"temperature": True}, "temperature", "number"),
        ({"top_p": "0.5"}, "top_p", "number"),
        ({"logit_bias": {"5": True}}, "logit_bias.5", "number"),
        ({"stream": "true"}, "stream", "boolean"),
        ({"stream": 1}, "stream", "boolean"),
        ({"logprobs": 1}, "logprobs", "boolean"),
        ({"stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage", "boolean"),
    ],
)
def test_known_fields_take_json_types_strictly(fields: dict[str, Any], param: str, kind: str) -> None:
    """No booleans or numeric strings for numbers, no 0/1 or "true" for booleans (OpenAI's 400s)."""
    error = rejection(ChatCompletionRequest, chat(**fields))
    assert (error.status, error.type, error.param) == (400, "invalid_request_error", param)
    expected = {"integer": "a valid integer", "number": "a valid number", "boolean": "a valid boolean"}[kind]
    assert error.message == f"Invalid value for '{param}': Input should be {expected}."


def test_whole_numbers_are_integers_as_in_json() -> None:
    body = ChatCompletionRequest.model_validate(chat(max_tokens=5.0, n=2.0, seed=-1.0, stop_token_ids=[7.0]))
    assert (body.max_tokens, body.n, body.seed, body.stop_token_ids) == (5, 2, -1, [7])
    assert all(type(value) is int for value in (body.max_tokens, body.n, body.seed, *body.stop_token_ids))
    # JSON object keys are strings: logit_bias keys stay token ids given as text.
    assert ChatCompletionRequest.model_validate(chat(logit_bias={"42": 1})).logit_bias == {42: 1.0}


def test_stop_string_becomes_a_list_and_max_completion_tokens_wins() -> None:
    body = ChatCompletionRequest.model_validate(chat(stop="END", max_tokens=5, max_completion_tokens=9))
    assert body.stop == ["END"]
    assert body.max_new_tokens == 9


def test_text_parts_are_joined_and_other_parts_rejected() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    body = ChatCompletionRequest.model_validate(chat(messages=[{"role": "user", "content": parts}]))
    assert body.messages[0].content == "a\nb"
    image = {"type": "image_url", "image_url": {"url": "http://x"}}
    error = rejection(ChatCompletionRequest, chat(messages=[{"role": "user", "content": [image]}]))
    assert error.param == "messages[0].content"
    assert "'image_url'" in error.message and "not supported yet" in error.message


@pytest.mark.parametrize(
    ("part", "message"),
    [
        ({"type": "text"}, "Missing required parameter: 'messages[0].content[1].text'."),
        ({"type": "text", "text": 5}, "Invalid value for 'messages[0].content[1].text': Input should be a valid string."),
    ],
)
def test_a_text_part_needs_its_text(part: dict[str, Any], message: str) -> None:
    content = [{"type": "text", "text": "a"}, part]
    error = rejection(ChatCompletionRequest, chat(messages=[{"role": "user", "content": content}]))
    assert (error.status, error.type, error.param) == (400, "invalid_request_error", "messages[0].content[1].text")
    assert error.message == message


def test_tool_messages_are_accepted() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ]
    body = ChatCompletionRequest.model_validate(chat(messages=messages))
    assert body.messages[1].tool_calls[0].function.arguments == '{"x": 1}'


def test_a_tool_message_needs_its_tool_call_id() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "42"},
    ]
    error = rejection(ChatCompletionRequest, chat(messages=messages))
    assert (error.status, error.type, error.param) == (400, "invalid_request_error", "messages[2].tool_call_id")
    assert error.message == "Missing required parameter: 'messages[2].tool_call_id'."


@pytest.mark.parametrize(
    ("schema", "fields"),
    [
        (ChatCompletionRequest, {"tools": []}),
        (ChatCompletionRequest, {"tools": [], "tool_choice": "none"}),
        (TokenizeRequest, {"tools": []}),
    ],
)
def test_tools_must_not_be_empty(schema: type[BaseModel], fields: dict[str, Any]) -> None:
    error = rejection(schema, {"messages": USER, **fields})
    assert (error.status, error.type, error.param) == (400, "invalid_request_error", "tools")
    assert error.message.startswith("Invalid value for 'tools': List should have at least 1 item")


@pytest.mark.parametrize(
    ("schema", "fields"),
    [
        (ChatCompletionRequest, {"stream_options": {"include_usage": True}}),
        (ChatCompletionRequest, {"stream": False, "stream_options": {}}),
        (CompletionRequest, {"stream": None, "stream_options": {"include_usage": False}}),
    ],
)
def test_stream_options_need_stream(schema: type[BaseModel], fields: dict[str, Any]) -> None:
    base = chat() if schema is ChatCompletionRequest else {"model": "m", "prompt": "x"}
    error = rejection(schema, {**base, **fields})
    assert (error.status, error.type, error.param) == (400, "invalid_request_error", "stream_options")
    assert error.message == "The 'stream_options' parameter is only allowed when 'stream' is enabled."
    streamed = schema.model_validate({**base, **fields, "stream": True})
    assert streamed.stream_options is not None


@pytest.mark.parametrize(
    ("schema", "fields", "param"),
    [
        (ChatCompletionRequest, {"functions": [{"name": "f"}]}, "functions"),
        (CompletionRequest, {"suffix": "x"}, "suffix"),
        (CompletionRequest, {"best_of": 3}, "best_of"),
    ],
)
def test_unimplemented_features_are_rejected_not_ignored(
    schema: type[BaseModel], fields: dict[str, Any], param: str
) -> None:
    base = chat() if schema is ChatCompletionRequest else {"model": "m", "prompt": "x"}
    error = rejection(schema, {**base, **fields})
    assert (error.status, error.param) == (400, param)
    assert error.message.endswith("is not supported yet.")


@pytest.mark.parametrize(
    ("prompt", "normalized"),
    [
        ("a", ["a"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2], [[1, 2]]),
        ([[1], [2, 3]], [[1], [2, 3]]),
        ("", [""]),
    ],
)
def test_prompt_forms(prompt: Any, normalized: list[Any]) -> None:
    assert CompletionRequest.model_validate({"prompt": prompt}).prompt == normalized
    assert EmbeddingRequest.model_validate({"input": prompt}).input == normalized


@pytest.mark.parametrize("prompt", [[], [[]], ["a", [1]], [True], [-1], [2**32], 5, None, [{"a": 1}]])
def test_bad_prompt_forms(prompt: Any) -> None:
    assert rejection(CompletionRequest, {"prompt": prompt}).param == "prompt"
    assert rejection(EmbeddingRequest, {"input": prompt}).param == "input"


def test_embedding_encoding_format() -> None:
    assert EmbeddingRequest.model_validate({"input": "a", "encoding_format": "base64"}).encoding_format == "base64"
    assert rejection(EmbeddingRequest, {"input": "a", "encoding_format": "int8"}).param == "encoding_format"
    assert rejection(EmbeddingRequest, {"input": "a", "dimensions": 0}).param == "dimensions"


def test_tokenize_needs_exactly_one_input() -> None:
    assert rejection(TokenizeRequest, {"model": "m"}).param == "prompt"
    assert rejection(TokenizeRequest, {"prompt": "a", "messages": USER}).param == "prompt"


@pytest.mark.parametrize(
    ("fields", "alternatives"),
    [({}, None), ({"logprobs": False}, None), ({"logprobs": True}, 0), ({"logprobs": True, "top_logprobs": 20}, 20)],
)
def test_chat_logprobs_and_top_logprobs(fields: dict[str, Any], alternatives: int | None) -> None:
    assert ChatCompletionRequest.model_validate(chat(**fields)).logprob_alternatives == alternatives


@pytest.mark.parametrize(
    "fields",
    [{"logprobs": True, "top_logprobs": 21}, {"logprobs": True, "top_logprobs": -1}, {"top_logprobs": 3},
     {"logprobs": False, "top_logprobs": 1}],
)
def test_chat_top_logprobs_range_and_needs_logprobs(fields: dict[str, Any]) -> None:
    assert rejection(ChatCompletionRequest, chat(**fields)).param == "top_logprobs"


def test_completion_logprobs_range_and_echo() -> None:
    body = CompletionRequest.model_validate({"prompt": "x", "logprobs": 5, "echo": True})
    assert (body.logprobs, body.echo) == (5, True)
    assert CompletionRequest.model_validate({"prompt": "x", "logprobs": 0}).logprobs == 0
    for bad in (6, -1, "many"):
        assert rejection(CompletionRequest, {"prompt": "x", "logprobs": bad}).param == "logprobs"
