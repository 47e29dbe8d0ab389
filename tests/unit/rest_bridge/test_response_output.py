"""A response's output items and stream events (ResponseBuilder), and its conversation as chat
messages: OpenAI's order and shapes, without a server."""
from __future__ import annotations

from typing import Any

import pytest

from rest_bridge.responses.conversation import chat_body, chat_messages, item_json
from rest_bridge.responses.output import ResponseBuilder
from rest_bridge.responses.schemas import ResponseCreateRequest
from tokenwire.v1 import common_pb2, generation_pb2

USAGE = common_pb2.Usage(prompt_tokens=7, completion_tokens=3, total_tokens=10, cached_tokens=2)


def _builder() -> ResponseBuilder:
    return ResponseBuilder({"id": "resp_1", "object": "response", "status": "in_progress", "output": [], "usage": None})


def _names(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


def _text_item(deltas: int) -> list[str]:
    """The events of one message item with `deltas` text deltas, from its opening to its end."""
    return [
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]


def _call_item(deltas: int) -> list[str]:
    """The events of one function_call item with `deltas` argument deltas."""
    return [
        "response.output_item.added",
        *["response.function_call_arguments.delta"] * deltas,
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]


def test_a_text_answer_streams_openai_events_in_order():
    builder = _builder()
    events = builder.started() + builder.text("Hel") + builder.text("") + builder.text("lo")
    events += builder.finish(generation_pb2.FINISH_REASON_STOP, USAGE)
    assert _names(events) == ["response.created", "response.in_progress", *_text_item(2), "response.completed"]
    assert [event["sequence_number"] for event in events] == list(range(10))
    # Snapshots: each event shows the item as it was then.
    assert events[0]["response"]["output"] == [] and events[0]["response"]["status"] == "in_progress"
    added, done = events[2]["item"], events[8]["item"]
    assert added["status"] == "in_progress" and added["content"] == []
    assert done["status"] == "completed" and done["content"][0]["text"] == "Hello"
    assert events[3]["part"] == {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
    assert {event["item_id"] for event in events[3:8]} == {added["id"]}
    assert [event["delta"] for event in events[4:6]] == ["Hel", "lo"] and events[6]["text"] == "Hello"
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["output"] == [done] and final["incomplete_details"] is None
    assert final["usage"]["input_tokens"] == 7 and final["usage"]["input_tokens_details"]["cached_tokens"] == 2
    assert final["usage"]["output_tokens"] == 3 and final["usage"]["total_tokens"] == 10


def test_text_then_tool_calls_close_each_item_before_the_next():
    builder = _builder()
    events = builder.text("Let me check.")
    events += builder.tool_call_delta(
        generation_pb2.ToolCallDelta(index=0, id="call_a", function=generation_pb2.FunctionCall(name="f", arguments=""))
    )
    events += builder.tool_call_delta(
        generation_pb2.ToolCallDelta(index=0, function=generation_pb2.FunctionCall(arguments='{"x": '))
    )
    events += builder.tool_call_delta(
        generation_pb2.ToolCallDelta(index=0, function=generation_pb2.FunctionCall(arguments="1}"))
    )
    events += builder.tool_call_delta(
        generation_pb2.ToolCallDelta(
            index=1, id="call_b", function=generation_pb2.FunctionCall(name="g", arguments="{}")
        )
    )
    events += builder.finish(generation_pb2.FINISH_REASON_TOOL_CALLS, USAGE)
    assert _names(events) == [*_text_item(1), *_call_item(2), *_call_item(1), "response.completed"]
    message, first, second = builder.response["output"]
    assert [item["type"] for item in (message, first, second)] == ["message", "function_call", "function_call"]
    assert (first["call_id"], first["name"], first["arguments"], first["status"]) == (
        "call_a",
        "f",
        '{"x": 1}',
        "completed",
    )
    assert events[9]["arguments"] == '{"x": 1}' and events[9]["output_index"] == 1
    assert events[6]["item"]["arguments"] == "" and events[6]["output_index"] == 1
    assert second["call_id"] == "call_b" and events[11]["output_index"] == 2


@pytest.mark.parametrize("reason", [generation_pb2.FINISH_REASON_LENGTH, generation_pb2.FINISH_REASON_ABORTED])
def test_a_cut_answer_is_incomplete(reason):
    builder = _builder()
    builder.text("Once upon")
    events = builder.finish(reason, USAGE)
    assert events[-1]["type"] == "response.incomplete"
    response = events[-1]["response"]
    assert response["status"] == "incomplete" and response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["status"] == "incomplete" and response["completed_at"] is None


def test_an_empty_answer_is_one_empty_message_and_a_whole_sequence_builds_the_same():
    builder = _builder()
    assert _names(builder.finish(generation_pb2.FINISH_REASON_STOP, USAGE))[-2:] == [
        "response.output_item.done",
        "response.completed",
    ]
    assert builder.response["output"][0]["content"][0]["text"] == ""
    sequence = generation_pb2.Sequence(
        text="Hi",
        tool_calls=[
            generation_pb2.ToolCall(id="call_c", function=generation_pb2.FunctionCall(name="f", arguments="{}"))
        ],
        finish=generation_pb2.FinishInfo(reason=generation_pb2.FINISH_REASON_TOOL_CALLS),
    )
    whole = _builder().whole(sequence, USAGE)
    assert [(item["type"], item["status"]) for item in whole["output"]] == [
        ("message", "completed"),
        ("function_call", "completed"),
    ]
    assert whole["output"][1]["arguments"] == "{}"


def test_a_failure_midway_sends_error_then_response_failed():
    builder = _builder()
    builder.text("Hi")
    events = builder.failed(503, None, "The model worker is unavailable.", None)
    assert _names(events) == ["error", "response.failed"]
    assert events[0]["message"] == "The model worker is unavailable."
    assert events[1]["response"]["status"] == "failed"
    assert events[1]["response"]["error"] == {"code": "server_error", "message": "The model worker is unavailable."}


def test_items_become_chat_messages_with_calls_joined_to_their_turn():
    body = ResponseCreateRequest.model_validate(
        {
            "model": "m",
            "input": [
                {"role": "user", "content": "Weather?"},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
                {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": {"city": "Paris"}},
                {"type": "function_call", "call_id": "call_2", "name": "weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "Sunny"},
                {
                    "type": "function_call_output",
                    "call_id": "call_2",
                    "output": [{"type": "input_text", "text": "Rain"}],
                },
            ],
        }
    )
    items = [item_json(item) for item in body.input]
    assert [item["id"].split("_")[0] for item in items] == ["msg", "msg", "fc", "fc", "fco", "fco"]
    assert items[1]["content"] == [{"type": "output_text", "text": "Checking.", "annotations": []}]
    messages = chat_messages("Be brief.", items)
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
                {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "Rain"},
    ]


def test_the_chat_body_takes_the_response_settings():
    body = ResponseCreateRequest.model_validate(
        {
            "model": "m",
            "input": "hi",
            "max_output_tokens": 9,
            "temperature": 0.5,
            "top_k": 3,
            "priority": 4,
            "stream": True,
            "text": {"format": {"type": "json_schema", "name": "a", "schema": {"type": "object"}, "strict": True}},
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "f"},
            "parallel_tool_calls": False,
        }
    )
    chat = chat_body(body, [{"role": "user", "content": "hi"}])
    assert (chat.max_new_tokens, chat.temperature, chat.top_k, chat.priority, chat.stream) == (9, 0.5, 3, 4, None)
    assert chat.response_format.json_schema.json_schema == {"type": "object"}
    assert chat.tools[0].function.name == "f" and chat.tool_choice.function.name == "f"
    assert chat.parallel_tool_calls is False
