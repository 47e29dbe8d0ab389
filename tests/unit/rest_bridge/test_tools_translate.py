"""response_format and tools: OpenAI bodies → protobuf, and tool calls → OpenAI JSON."""
from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from rest_bridge import translate
from rest_bridge.errors import from_validation_error, openai_param
from rest_bridge.schemas import ChatCompletionRequest
from tokenwire.v1 import generation_pb2

USER = [{"role": "user", "content": "hi"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": True,
    },
}


def chat_proto(**fields: Any) -> generation_pb2.GenerateRequest:
    return translate.chat_request(ChatCompletionRequest.model_validate({"messages": USER, **fields}), "r")


def rejected_param(**fields: Any) -> str | None:
    with pytest.raises(ValidationError) as caught:
        ChatCompletionRequest.model_validate({"messages": USER, **fields})
    error = from_validation_error(caught.value)
    assert error.status == 400
    return error.param


def test_response_formats() -> None:
    assert not chat_proto(response_format={"type": "text"}).HasField("structured_output")
    assert chat_proto(response_format={"type": "json_object"}).structured_output.json_object
    schema = {"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "string"}}}
    request = chat_proto(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}})
    # Key order is kept: it is the order the model writes properties in.
    assert request.structured_output.json_schema == json.dumps(schema)
    assert json.loads(chat_proto(response_format={"type": "json_schema", "json_schema": {"name": "x"}}).structured_output.json_schema) == {}


def test_tools_and_tool_choices() -> None:
    request = chat_proto(tools=[WEATHER], tool_choice="required", parallel_tool_calls=False)
    (tool,) = request.tools
    assert (tool.type, tool.function.name, tool.function.description) == ("function", "get_weather", "Weather in a city.")
    assert json.loads(tool.function.parameters) == WEATHER["function"]["parameters"]
    assert request.tool_choice.mode == generation_pb2.TOOL_CHOICE_MODE_REQUIRED
    assert request.HasField("parallel_tool_calls") and not request.parallel_tool_calls
    named = chat_proto(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert named.tool_choice.function_name == "get_weather"
    assert chat_proto(tools=[WEATHER], tool_choice="none").tool_choice.mode == generation_pb2.TOOL_CHOICE_MODE_NONE
    unset = chat_proto(tools=[WEATHER])
    assert unset.tool_choice.WhichOneof("choice") is None and not unset.HasField("parallel_tool_calls")
    bare = chat_proto(tools=[{"type": "function", "function": {"name": "ping"}}])
    assert bare.tools[0].function.parameters == ""


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}}, "response_format"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": {"type": "function"}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "other"}}}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}, "tools[0].function.parameters"),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ],
)
def test_invalid_tools_and_formats_are_400_naming_the_param(fields: dict[str, Any], param: str) -> None:
    assert rejected_param(**fields) == param


def test_worker_field_paths_map_to_openai_params() -> None:
    def params(**extras: object) -> dict[str, str]:
        body = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], **extras})
        return translate.request_params(translate.CHAT, body)

    with_format = params(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}})
    assert openai_param("structured_output.json_schema", with_format) == "response_format"
    assert openai_param("structured_output", with_format) == "response_format"
    assert openai_param("structured_output.regex", params(guided_regex="a+")) == "guided_regex"
    assert openai_param("structured_output.json_schema", params(guided_json={})) == "guided_json"
    plain = params()
    assert openai_param("tools[1].function.parameters", plain) == "tools[1].function.parameters"
    assert openai_param("tool_choice.function_name", plain) == "tool_choice.function.name"


def _sequence(text: str, calls: list[tuple[str, str, str]], reason: int) -> generation_pb2.Sequence:
    sequence = generation_pb2.Sequence(index=0, text=text, finish=generation_pb2.FinishInfo(reason=reason))
    for call_id, name, arguments in calls:
        sequence.tool_calls.add(id=call_id, type="function", function=generation_pb2.FunctionCall(name=name, arguments=arguments))
    return sequence


def test_tool_calls_in_a_chat_completion() -> None:
    header = translate.ResponseHeader(id="chatcmpl-1", created=1, model="m")
    response = generation_pb2.GenerateResponse(
        sequences=[_sequence("", [("call_1", "get_weather", '{"city": "Paris"}')], generation_pb2.FINISH_REASON_TOOL_CALLS)]
    )
    choice = translate.generation_response(translate.CHAT, [response], 1, header)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}],
    }
    plain = generation_pb2.GenerateResponse(sequences=[_sequence("Hi", [], generation_pb2.FINISH_REASON_STOP)])
    message = translate.generation_response(translate.CHAT, [plain], 1, header)["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "Hi", "refusal": None}


def test_tool_call_chunk_deltas() -> None:
    first = generation_pb2.ToolCallDelta(index=0, id="call_1", type="function", function=generation_pb2.FunctionCall(name="f"))
    later = generation_pb2.ToolCallDelta(index=0, function=generation_pb2.FunctionCall(arguments='{"a"'))
    choice = translate.chat_tool_calls_chunk_choice(2, [first, later], "tool_calls")
    assert choice == {
        "index": 2,
        "delta": {
            "tool_calls": [
                {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}},
                {"index": 0, "function": {"arguments": '{"a"'}},
            ]
        },
        "logprobs": None,
        "finish_reason": "tool_calls",
    }


class _FakeStreamCall:
    """Just what generation_events uses of a grpc.aio stream call: read() and cancel()."""

    def __init__(self, messages: list[generation_pb2.GenerateStreamResponse]) -> None:
        self._messages = [generation_pb2.GenerateStreamResponse(prompt_info=generation_pb2.PromptInfo()), *messages]
        self.cancelled = False

    async def read(self):
        import grpc

        return self._messages.pop(0) if self._messages else grpc.aio.EOF

    def cancel(self) -> bool:
        self.cancelled = True
        return True


def _delta(text: str = "", calls: tuple[generation_pb2.ToolCallDelta, ...] = (), reason: int | None = None):
    delta = generation_pb2.SequenceDelta(index=0, text=text, tool_calls=calls)
    if reason is not None:
        delta.finish.reason = reason
    return generation_pb2.GenerateStreamResponse(delta=delta)


async def test_streamed_tool_calls_come_after_content_and_carry_the_finish_reason() -> None:
    from rest_bridge.fanout import PromptStreams
    from rest_bridge.sse import DONE, generation_events

    first = generation_pb2.ToolCallDelta(index=0, id="call_1", type="function", function=generation_pb2.FunctionCall(name="f"))
    fragment = generation_pb2.ToolCallDelta(index=0, function=generation_pb2.FunctionCall(arguments='{"a": 1'))
    last = generation_pb2.ToolCallDelta(index=0, function=generation_pb2.FunctionCall(arguments="}"))
    call = _FakeStreamCall([
        _delta("Let me see."),
        _delta(calls=(first,)),
        _delta(calls=(fragment,)),
        _delta(calls=(last,), reason=generation_pb2.FINISH_REASON_TOOL_CALLS),  # finish with the last fragment
    ])
    header = translate.ResponseHeader(id="chatcmpl-1", created=1, model="m")
    streams = PromptStreams([lambda: call])
    events = [event async for event in generation_events(translate.CHAT, streams, header, 1, False)]
    assert events[-1] == DONE and call.cancelled
    choices = [json.loads(event[6:])["choices"][0] for event in events[:-1]]
    assert [choice["delta"] for choice in choices] == [
        {"role": "assistant", "content": ""},
        {"content": "Let me see."},
        {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"a": 1'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]},
    ]
    assert [choice["finish_reason"] for choice in choices] == [None, None, None, None, "tool_calls"]
