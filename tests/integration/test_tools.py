"""Tools on the real stack: tool_choice none / auto / required / named, tool calls in the history,
streamed tool-call deltas (OpenAI SDK and raw SSE bytes), and the same through gRPC."""
from __future__ import annotations

import json
from typing import Any

import grpc
import jsonschema
import pytest

from tests.integration.conftest import CHAT_MODEL
from tokenwire.v1 import generation_pb2

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME_PARAMETERS = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "maxLength": 40}},
    "required": ["timezone"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city",
                                      "parameters": WEATHER_PARAMETERS}},
    {"type": "function", "function": {"name": "get_time", "description": "Get the current time in a timezone",
                                      "parameters": TIME_PARAMETERS}},
]
PARAMETERS = {"get_weather": WEATHER_PARAMETERS, "get_time": TIME_PARAMETERS}
QUESTION = [{"role": "user", "content": "What's the weather like in Paris today?"}]
NAMED = {"type": "function", "function": {"name": "get_time"}}


def _create(client, **kwargs: Any):
    options = {"model": CHAT_MODEL, "messages": QUESTION, "tools": TOOLS, "temperature": 0, "max_tokens": 200}
    return client.chat.completions.create(**{**options, **kwargs})


def _check_calls(calls, names: set[str] | None = None) -> None:
    """Every call: a call_ id, type function, a known name, arguments a JSON text that validates."""
    assert calls
    assert len({call.id for call in calls}) == len(calls)
    for call in calls:
        assert call.id.startswith("call_") and call.type == "function"
        assert call.function.name in (names or PARAMETERS)
        assert isinstance(call.function.arguments, str)
        jsonschema.validate(json.loads(call.function.arguments), PARAMETERS[call.function.name])


def test_tool_choice_required_gives_valid_calls_and_finish_reason_tool_calls(client):
    choice = _create(client, tool_choice="required").choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    _check_calls(choice.message.tool_calls)


def test_required_without_parallel_calls_gives_exactly_one(client):
    choice = _create(client, tool_choice="required", parallel_tool_calls=False).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert len(choice.message.tool_calls) == 1
    _check_calls(choice.message.tool_calls)


def test_named_tool_choice_calls_that_function_and_finishes_with_stop(client):
    choice = _create(client, tool_choice=NAMED).choices[0]
    assert choice.finish_reason == "stop"
    assert len(choice.message.tool_calls) == 1
    _check_calls(choice.message.tool_calls, {"get_time"})


def test_tool_choice_none_gives_plain_text(client):
    choice = _create(client, tool_choice="none", max_tokens=30).choices[0]
    assert choice.message.tool_calls is None
    assert choice.message.content and "<tool_call>" not in choice.message.content
    assert choice.finish_reason in ("stop", "length")


def test_tool_choice_auto_lets_the_model_answer_in_text(client):
    """Under auto the grammar lets the model write text, and the 135M model, greedy, answers these
    questions in text, not calls (that a call it starts is schema-checked and ends the turn with
    tool_calls is checked in tests/unit/service/structured/). The answer is plain content."""
    for question in ("What's the weather like in Paris today?", "Call get_time for the timezone Europe/Paris."):
        choice = _create(client, messages=[{"role": "user", "content": question}], max_tokens=60).choices[0]
        assert choice.message.tool_calls is None
        assert choice.finish_reason in ("stop", "length")
        assert choice.message.content and "<tool_call>" not in choice.message.content


def test_tool_messages_in_the_history_are_accepted(client):
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "celsius"})}}
    history = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"temperature": 21, "sky": "sunny"})},
    ]
    for tool_choice in ("auto", "none"):
        reply = _create(client, messages=history, tool_choice=tool_choice, max_tokens=30)
        assert reply.choices[0].finish_reason in ("stop", "length", "tool_calls")
        assert reply.usage.prompt_tokens > 60  # the tools, the call and its result were all rendered


def test_tool_calls_stream_through_the_sdk(client):
    stream = _create(client, tool_choice="required", stream=True, stream_options={"include_usage": True})
    calls: dict[int, dict[str, str]] = {}
    reasons, usage = [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.finish_reason:
                reasons.append(choice.finish_reason)
            for delta in choice.delta.tool_calls or ():
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                if delta.id:
                    assert not call["id"], "id repeated"
                    call["id"], call["name"] = delta.id, delta.function.name
                call["arguments"] += delta.function.arguments or ""
    assert reasons == ["tool_calls"] and usage is not None
    assert sorted(calls) == list(range(len(calls)))
    for call in calls.values():
        assert call["id"].startswith("call_")
        jsonschema.validate(json.loads(call["arguments"]), PARAMETERS[call["name"]])


def _sse_events(http, body: dict[str, Any]) -> list[dict[str, Any]]:
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        raw = response.read()
    assert raw.endswith(b"data: [DONE]\n\n")
    events = raw.split(b"\n\n")[:-1]
    for event in events:
        assert event.startswith(b"data: ") and b"\n" not in event
    return [json.loads(event[6:]) for event in events[:-1]]


def _stream_body(**kwargs: Any) -> dict[str, Any]:
    return {"model": CHAT_MODEL, "messages": QUESTION, "tools": TOOLS, "temperature": 0, "max_tokens": 200,
            "stream": True, **kwargs}


def test_pitfall_02_tool_call_deltas_carry_id_and_name_once_and_string_arguments(http):
    """Pitfall 2: id/name missing on the first delta, repeated later, arguments as an object."""
    chunks = _sse_events(http, _stream_body(tool_choice="required"))
    deltas = [delta for chunk in chunks for choice in chunk["choices"] for delta in choice["delta"].get("tool_calls", [])]
    assert deltas
    seen: dict[int, str] = {}
    arguments: dict[int, str] = {}
    for delta in deltas:
        assert isinstance(delta["function"]["arguments"], str)  # never an object
        if delta["index"] not in seen:
            # First delta of a call: index, id, type and function.name, arguments "" or a fragment.
            assert set(delta) == {"index", "id", "type", "function"}
            assert delta["id"].startswith("call_") and delta["type"] == "function"
            assert set(delta["function"]) == {"name", "arguments"} and delta["function"]["name"] in PARAMETERS
            assert delta["index"] == len(seen)  # the second call gets index 1
            seen[delta["index"]] = delta["function"]["name"]
        else:
            # Later deltas: only index and an arguments fragment; no id or name again.
            assert set(delta) == {"index", "function"} and set(delta["function"]) == {"arguments"}
        arguments[delta["index"]] = arguments.get(delta["index"], "") + delta["function"]["arguments"]
    for index, name in seen.items():
        jsonschema.validate(json.loads(arguments[index]), PARAMETERS[name])
    # Shape around the deltas: the role opening first, one finish_reason, consistent ids.
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len({(chunk["id"], chunk["created"]) for chunk in chunks}) == 1
    reasons = [choice["finish_reason"] for chunk in chunks for choice in chunk["choices"] if choice["finish_reason"]]
    assert reasons == ["tool_calls"]
    assert not any("content" in choice["delta"] and choice["delta"]["content"]
                   for chunk in chunks for choice in chunk["choices"])


def _finish_reasons(http, stream: bool, **kwargs: Any) -> list[str]:
    if stream:
        chunks = _sse_events(http, _stream_body(**kwargs))
        return [choice["finish_reason"] for chunk in chunks for choice in chunk["choices"] if choice["finish_reason"]]
    body = {**_stream_body(**kwargs), "stream": False}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    return [choice["finish_reason"] for choice in response.json()["choices"]]


@pytest.mark.parametrize("stream", [False, True])
def test_pitfall_03_finish_reason_tool_calls_vs_stop_vs_length(http, stream):
    """Pitfall 3: `tool_calls` under auto/required, `stop` for a named tool choice, `length` when
    max tokens cut the call; never a non-standard value."""
    assert _finish_reasons(http, stream, tool_choice="required") == ["tool_calls"]
    assert _finish_reasons(http, stream, tool_choice=NAMED) == ["stop"]
    assert _finish_reasons(http, stream, tool_choice="required", max_tokens=18) == ["length"]
    assert _finish_reasons(http, stream, tool_choice="none", max_tokens=5) == ["length"]


def test_a_call_cut_by_max_tokens_keeps_its_partial_arguments(client):
    choice = _create(client, tool_choice=NAMED, max_tokens=20).choices[0]
    assert choice.finish_reason == "length"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_time" and isinstance(call.function.arguments, str)


@pytest.mark.parametrize("tool_choice", ["required", NAMED])
@pytest.mark.parametrize("max_tokens", [1, 3, 6])
def test_a_call_cut_before_its_name_shows_no_markup(client, tool_choice, max_tokens):
    choice = _create(client, tool_choice=tool_choice, max_tokens=max_tokens).choices[0]
    assert choice.finish_reason == "length"
    assert not choice.message.content and not choice.message.tool_calls


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "bogus"}}}]},
         "tools[0].function.parameters"),
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name"),
    ],
)
def test_invalid_tools_are_400(http, fields, param):
    body = {"model": CHAT_MODEL, "messages": QUESTION, "tools": TOOLS, **fields}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


# The same capability through the native gRPC API.


def _grpc_tools() -> list[generation_pb2.Tool]:
    return [
        generation_pb2.Tool(type="function", function=generation_pb2.FunctionDefinition(
            name=tool["function"]["name"], description=tool["function"]["description"],
            parameters=json.dumps(tool["function"]["parameters"]),
        ))
        for tool in TOOLS
    ]


def _grpc_request(tool_choice: generation_pb2.ToolChoice, **kwargs: Any) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        chat=generation_pb2.ChatPrompt(messages=[generation_pb2.ChatMessage(role="user", content=QUESTION[0]["content"])]),
        sampling=generation_pb2.SamplingParams(temperature=0),
        stopping=generation_pb2.StoppingCriteria(max_new_tokens=200),
        tools=_grpc_tools(),
        tool_choice=tool_choice,
        **kwargs,
    )


def test_grpc_required_and_named_tool_calls(stub):
    required = stub.Generate(_grpc_request(generation_pb2.ToolChoice(mode=generation_pb2.TOOL_CHOICE_MODE_REQUIRED)))
    sequence = required.sequences[0]
    assert sequence.finish.reason == generation_pb2.FINISH_REASON_TOOL_CALLS
    assert sequence.text == "" and sequence.tool_calls
    for call in sequence.tool_calls:
        assert call.id.startswith("call_") and call.type == "function"
        jsonschema.validate(json.loads(call.function.arguments), PARAMETERS[call.function.name])
    named = stub.Generate(_grpc_request(generation_pb2.ToolChoice(function_name="get_time"))).sequences[0]
    assert named.finish.reason == generation_pb2.FINISH_REASON_STOP
    assert [call.function.name for call in named.tool_calls] == ["get_time"]
    jsonschema.validate(json.loads(named.tool_calls[0].function.arguments), TIME_PARAMETERS)


def test_grpc_streamed_tool_call_deltas(stub):
    request = _grpc_request(generation_pb2.ToolChoice(mode=generation_pb2.TOOL_CHOICE_MODE_REQUIRED),
                            parallel_tool_calls=False)
    deltas = [event.delta for event in stub.GenerateStream(request) if event.HasField("delta")]
    calls = [call for delta in deltas for call in delta.tool_calls]
    assert calls[0].id.startswith("call_") and calls[0].type == "function" and calls[0].function.name
    assert all(not (c.id or c.type or c.function.name) for c in calls[1:])
    assert {c.index for c in calls} == {0}
    arguments = "".join(c.function.arguments for c in calls)
    jsonschema.validate(json.loads(arguments), PARAMETERS[calls[0].function.name])
    assert "".join(delta.text for delta in deltas) == ""
    assert deltas[-1].finish.reason == generation_pb2.FINISH_REASON_TOOL_CALLS
    unary = stub.Generate(request).sequences[0]
    assert len(unary.tool_calls) == 1 and unary.tool_calls[0].function.arguments == arguments


def test_grpc_tool_history_and_errors(stub):
    history = generation_pb2.ChatPrompt(messages=[
        generation_pb2.ChatMessage(role="user", content=QUESTION[0]["content"]),
        generation_pb2.ChatMessage(role="assistant", tool_calls=[generation_pb2.ToolCall(
            id="call_1", type="function",
            function=generation_pb2.FunctionCall(name="get_weather", arguments='{"city": "Paris", "unit": "celsius"}'),
        )]),
        generation_pb2.ChatMessage(role="tool", tool_call_id="call_1", content='{"temperature": 21}'),
    ])
    request = _grpc_request(generation_pb2.ToolChoice(mode=generation_pb2.TOOL_CHOICE_MODE_NONE))
    request.chat.CopyFrom(history)
    request.stopping.max_new_tokens = 10
    assert stub.Generate(request).sequences[0].finish.reason in (
        generation_pb2.FINISH_REASON_STOP, generation_pb2.FINISH_REASON_LENGTH)
    text_prompt = _grpc_request(generation_pb2.ToolChoice(mode=generation_pb2.TOOL_CHOICE_MODE_REQUIRED))
    text_prompt.text = "hello"
    unknown = _grpc_request(generation_pb2.ToolChoice(function_name="nope"))
    for bad in (text_prompt, unknown):
        with pytest.raises(grpc.RpcError) as caught:
            stub.Generate(bad)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
