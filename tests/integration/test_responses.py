"""The Responses API on the real stack, through the official SDK: create, stream (raw events and
the SDK's helper), retrieve / delete / input_items, previous_response_id chains, store false,
text.format, function calls and their outputs, incomplete answers, errors.

A response is a chat generation underneath: where it matters, a test checks that the response
gives exactly the greedy answer chat gives to the same conversation.
"""
from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from .conftest import CHAT_MODEL

QUESTION = "What is the capital of France?"
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


def _chat_reply(client: openai.OpenAI, messages: list[dict], max_tokens: int):
    return client.chat.completions.create(model=CHAT_MODEL, messages=messages, max_tokens=max_tokens, temperature=0)


def _chat_text(client: openai.OpenAI, messages: list[dict], max_tokens: int) -> tuple[str, int]:
    reply = _chat_reply(client, messages, max_tokens)
    return reply.choices[0].message.content or "", reply.usage.prompt_tokens


# The Responses status of a chat answer's finish reason.
STATUS_OF_FINISH = {"stop": "completed", "length": "incomplete"}


def _sse(http, body: dict) -> list[tuple[str, dict]]:
    """(event line, data) of every event of a streamed response."""
    with http.stream("POST", "/v1/responses", json=body) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
        raw = reply.read().decode()
    events = []
    for block in raw.strip().split("\n\n"):
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: "), block
        events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return events


def test_create_answers_as_chat_does_with_openai_shape(client):
    response = client.responses.create(
        model=CHAT_MODEL, instructions="Answer briefly.", input=QUESTION, max_output_tokens=12, temperature=0
    )
    reply = _chat_reply(
        client, [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": QUESTION}], 12
    )
    text, prompt_tokens = reply.choices[0].message.content or "", reply.usage.prompt_tokens
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.output_text == text and text
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert [part.type for part in message.content] == ["output_text"] and message.content[0].annotations == []
    usage = response.usage
    assert usage.input_tokens == prompt_tokens and usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens >= 0 and usage.output_tokens_details.reasoning_tokens == 0
    assert response.model == CHAT_MODEL and response.instructions == "Answer briefly." and response.store is True
    assert response.status == STATUS_OF_FINISH[reply.choices[0].finish_reason]


def test_stream_sends_openai_events_in_order(client, http):
    body = {"model": CHAT_MODEL, "input": QUESTION, "max_output_tokens": 12, "temperature": 0, "stream": True}
    events = _sse(http, body)
    names = [name for name, _ in events]
    assert [data["type"] for _, data in events] == names
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    deltas = names.count("response.output_text.delta")
    assert deltas >= 1
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        names[-1],
    ]
    reply = _chat_reply(client, [{"role": "user", "content": QUESTION}], 12)
    assert names[-1] == f"response.{STATUS_OF_FINISH[reply.choices[0].finish_reason]}"
    final = events[-1][1]["response"]
    text = "".join(data["delta"] for name, data in events if name == "response.output_text.delta")
    assert events[-4][1]["text"] == text == final["output"][0]["content"][0]["text"]
    assert events[0][1]["response"]["status"] == "in_progress" and events[0][1]["response"]["output"] == []
    whole = client.responses.create(**{key: value for key, value in body.items() if key != "stream"})
    assert whole.output_text == text
    # Stored once the stream ends.
    assert client.responses.retrieve(final["id"]).output_text == text


def test_the_sdk_stream_helper_gives_the_final_response(client):
    with client.responses.stream(model=CHAT_MODEL, input=QUESTION, max_output_tokens=30, temperature=0) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed" and final.output_text == "".join(deltas)
    assert "Paris" in final.output_text


def test_retrieve_delete_and_input_items(client):
    items = [
        {"role": "user", "content": "Hello."},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi!"}]},
        {"role": "user", "content": [{"type": "input_text", "text": "Name a color."}]},
    ]
    created = client.responses.create(model=CHAT_MODEL, input=items, max_output_tokens=4, temperature=0)
    assert client.responses.retrieve(created.id).model_dump() == created.model_dump()
    newest_first = client.responses.input_items.list(created.id)
    assert [(item.role, item.content[0].text) for item in newest_first.data] == [
        ("user", "Name a color."),
        ("assistant", "Hi!"),
        ("user", "Hello."),
    ]
    oldest_first = client.responses.input_items.list(created.id, order="asc", limit=2)
    assert [item.id for item in oldest_first.data] == [item.id for item in newest_first.data][::-1][:2]
    assert oldest_first.has_more
    rest = client.responses.input_items.list(created.id, order="asc", after=oldest_first.data[-1].id)
    assert [item.id for item in rest.data] == [newest_first.data[0].id] and not rest.has_more

    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)


def test_previous_response_id_continues_the_stored_conversation(client):
    first = client.responses.create(
        model=CHAT_MODEL, instructions="Be brief.", input=QUESTION, max_output_tokens=10, temperature=0
    )
    second = client.responses.create(
        model=CHAT_MODEL, previous_response_id=first.id, input="And of Italy?", max_output_tokens=10, temperature=0
    )
    third = client.responses.create(
        model=CHAT_MODEL, previous_response_id=second.id, input="And of Spain?", max_output_tokens=10, temperature=0
    )
    assert third.previous_response_id == second.id
    # The instructions are not carried over (as OpenAI's); every earlier turn is.
    history = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": second.output_text},
        {"role": "user", "content": "And of Spain?"},
    ]
    assert (third.output_text, third.usage.input_tokens) == _chat_text(client, history, 10)
    # input_items lists a response's own input only.
    assert [item.content[0].text for item in client.responses.input_items.list(third.id).data] == ["And of Spain?"]


def test_store_false_is_not_retrievable_nor_continued(client):
    response = client.responses.create(model=CHAT_MODEL, input=QUESTION, store=False, max_output_tokens=4)
    assert response.store is False and response.output_text
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=CHAT_MODEL, input="More.", previous_response_id=response.id, max_output_tokens=4)
    assert caught.value.body["code"] == "previous_response_not_found"
    assert caught.value.body["param"] == "previous_response_id"


class City(BaseModel):
    # Bounded, so that even a small model's answer ends well within max_output_tokens.
    name: str = Field(max_length=20)
    country: str = Field(max_length=20)
    is_capital: bool


def test_json_schema_output_validates_and_parses(client):
    parsed = client.responses.parse(
        model=CHAT_MODEL, input="Describe a big city.", text_format=City, max_output_tokens=60, temperature=0
    )
    assert parsed.status == "completed" and isinstance(parsed.output_parsed, City)
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    raw = client.responses.create(
        model=CHAT_MODEL,
        input="Is water wet?",
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}},
        max_output_tokens=20,
    )
    jsonschema.validate(json.loads(raw.output_text), schema)
    assert raw.text.format.type == "json_schema" and raw.text.format.name == "answer"


def test_function_call_and_its_output_round_trip(client):
    asked = client.responses.create(
        model=CHAT_MODEL,
        input="What is the weather in Paris?",
        tools=[WEATHER_TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=40,
        temperature=0,
    )
    [call] = asked.output
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")
    jsonschema.validate(json.loads(call.arguments), WEATHER_TOOL["parameters"])
    assert asked.status == "completed" and asked.tools[0].name == "get_weather"

    answered = client.responses.create(
        model=CHAT_MODEL,
        previous_response_id=asked.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 25 C"}],
        tools=[WEATHER_TOOL],
        tool_choice="none",
        max_output_tokens=12,
        temperature=0,
    )
    # The worker saw the call and its result as chat's tool_calls and tool messages.
    chat = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.call_id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.call_id, "content": "Sunny, 25 C"},
        ],
        tools=[{"type": "function", "function": {k: v for k, v in WEATHER_TOOL.items() if k != "type"}}],
        tool_choice="none",
        max_tokens=12,
        temperature=0,
    )
    assert answered.output_text == chat.choices[0].message.content
    assert answered.usage.input_tokens == chat.usage.prompt_tokens


def test_a_streamed_function_call_sends_argument_events(http):
    body = {
        "model": CHAT_MODEL,
        "input": "Weather in Rome?",
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "max_output_tokens": 40,
        "stream": True,
    }
    events = _sse(http, body)
    names = [name for name, _ in events]
    deltas = names.count("response.function_call_arguments.delta")
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        *["response.function_call_arguments.delta"] * deltas,
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added, done = events[2][1]["item"], events[-2][1]["item"]
    assert added["type"] == "function_call" and added["arguments"] == "" and added["status"] == "in_progress"
    arguments = "".join(data["delta"] for name, data in events if name == "response.function_call_arguments.delta")
    assert done["arguments"] == arguments == events[-3][1]["arguments"] and done["status"] == "completed"
    assert done["call_id"] == added["call_id"] and done["name"] == "get_weather"
    jsonschema.validate(json.loads(arguments), WEATHER_TOOL["parameters"])


def test_a_cut_answer_is_incomplete(client, http):
    response = client.responses.create(model=CHAT_MODEL, input="Tell me a long story.", max_output_tokens=3)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 3 and response.output[0].status == "incomplete"
    events = _sse(http, {"model": CHAT_MODEL, "input": "Tell me a long story.", "max_output_tokens": 3, "stream": True})
    assert events[-1][0] == "response.incomplete"
    assert events[-1][1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


@pytest.mark.parametrize("stream", [False, True])
def test_errors_come_in_the_envelope_before_any_event(http, stream):
    def error(body: dict, status: int) -> dict:
        reply = http.post("/v1/responses", json={"stream": stream, **body})
        assert reply.status_code == status and reply.headers["content-type"] == "application/json"
        return reply.json()["error"]

    assert error({"model": "no/such-model", "input": "hi"}, 404)["code"] == "model_not_found"
    assert error({"model": CHAT_MODEL, "input": "hi", "previous_response_id": "resp_x"}, 400)["param"] == (
        "previous_response_id"
    )
    assert error({"model": CHAT_MODEL, "input": "hi", "temperature": 3}, 400)["param"] == "temperature"
    assert error({"model": CHAT_MODEL, "input": [{"type": "reasoning"}]}, 400)["param"] == "input[0]"
    bad_schema = {"format": {"type": "json_schema", "name": "x", "schema": {"type": "nonsense"}}}
    assert error({"model": CHAT_MODEL, "input": "hi", "text": bad_schema}, 400)["param"] == "text.format"
    assert (
        error({"model": CHAT_MODEL, "input": "hi", "tools": [{"type": "web_search"}]}, 400)["param"] == "tools[0].type"
    )
    assert error({"model": CHAT_MODEL}, 400)["param"] == "input"
    assert http.get("/v1/responses/resp_missing").status_code == 404
