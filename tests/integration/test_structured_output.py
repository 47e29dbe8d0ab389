"""response_format (REST) and structured_output (gRPC) on the real stack: the 135M model's output
always parses, and validates against the schema, because decoding is constrained."""
from __future__ import annotations

import json
import re

import grpc
import jsonschema
import pytest
from pydantic import BaseModel, Field

from tests.integration.conftest import CHAT_MODEL
from tests.rich_status import violated_fields
from tokenwire.v1 import generation_pb2


def _closed_object(**properties: dict) -> dict:
    """A JSON schema object that requires each of `properties` and allows no other."""
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


PERSON = _closed_object(name={"type": "string", "maxLength": 24}, age={"type": "integer", "minimum": 18, "maximum": 65})
SCHEMAS = {
    "required_fields": PERSON,
    "enum": _closed_object(color={"enum": ["red", "green", "blue"]}, certain={"type": "boolean"}),
    "array": _closed_object(
        planets={"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 2, "maxItems": 3}
    ),
    "nested": _closed_object(
        city={"type": "string", "maxLength": 20},
        location=_closed_object(
            country={"type": "string", "maxLength": 20},
            population_millions={"type": "number", "minimum": 0, "maximum": 50},
        ),
    ),
    "integer_ranges": _closed_object(
        year={"type": "integer", "minimum": 1900, "maximum": 2030},
        month={"type": "integer", "minimum": 1, "maximum": 12},
        negative={"type": "integer", "exclusiveMaximum": 0, "minimum": -99},
    ),
}
PROMPTS = {
    "required_fields": "Invent a person.",
    "enum": "What color is the sky?",
    "array": "Name some planets.",
    "nested": "Tell me about Paris.",
    "integer_ranges": "When did the first moon landing happen?",
}


def _chat(client, content: str, **kwargs):
    return client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": content}], temperature=0, **kwargs
    )


def test_json_object_output_parses(client):
    reply = _chat(client, "Describe a cat as a JSON object with its name and age.",
                  response_format={"type": "json_object"}, max_tokens=150)
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(json.loads(choice.message.content), dict)


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_json_schema_output_parses_and_validates(client, name):
    schema = SCHEMAS[name]
    reply = _chat(
        client, PROMPTS[name], max_tokens=120,
        response_format={"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}},
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    jsonschema.validate(json.loads(choice.message.content), schema)


def test_json_schema_validates_when_sampling_and_streaming(client):
    stream = client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "Invent a person."}], stream=True,
        temperature=1.0, seed=11, n=2, max_tokens=80,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
    )
    texts, reasons = {0: "", 1: ""}, {}
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                reasons[choice.index] = choice.finish_reason
    assert reasons == {0: "stop", 1: "stop"}
    for text in texts.values():
        jsonschema.validate(json.loads(text), PERSON)


class Person(BaseModel):
    name: str = Field(max_length=24)
    age: int = Field(ge=18, le=65)


def test_the_sdks_parse_helper_with_a_pydantic_model(client):
    reply = client.chat.completions.parse(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "Invent a person."}],
        temperature=0, max_tokens=60, response_format=Person,
    )
    assert isinstance(reply.choices[0].message.parsed, Person)


def test_response_format_text_is_plain_text(client):
    reply = _chat(client, "Say hello.", response_format={"type": "text"}, max_tokens=8)
    assert reply.choices[0].message.content


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "schema",
    [{"type": "foo"}, {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, {"minimum": "x"}],
)
def test_invalid_schema_is_400_naming_response_format(http, schema, stream):
    response = http.post("/v1/chat/completions", json={
        "model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": stream,
        "response_format": {"type": "json_schema", "json_schema": {"name": "bad", "schema": schema}},
    })
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "response_format")
    assert error["code"] is None or isinstance(error["code"], str)
    assert "json_schema" in error["message"]


def test_unknown_response_format_type_is_400(http):
    response = http.post("/v1/chat/completions", json={
        "model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "yaml"},
    })
    assert response.status_code == 400 and response.json()["error"]["param"] == "response_format.type"


# vLLM's structured-output extras, on chat and on completions (which also take response_format).


def _complete(client, prompt: str, **extra_body):
    return client.completions.create(
        model=CHAT_MODEL, prompt=prompt, temperature=0, max_tokens=40, extra_body=extra_body
    ).choices[0]


def test_guided_choice_on_chat_picks_one_of_the_strings(client):
    reply = _chat(client, "Is 'I love it' positive or negative?", max_tokens=10,
                  extra_body={"guided_choice": ["positive", "negative"]})
    assert reply.choices[0].message.content in ("positive", "negative")
    assert reply.choices[0].finish_reason == "stop"


def test_guided_json_on_chat_and_completions_validates(client):
    chat = _chat(client, "Invent a person.", max_tokens=60, extra_body={"guided_json": PERSON})
    jsonschema.validate(json.loads(chat.choices[0].message.content), PERSON)
    # As JSON text too, as vLLM accepts it.
    completion = _complete(client, "A person as JSON:", guided_json=json.dumps(PERSON))
    jsonschema.validate(json.loads(completion.text), PERSON)


def test_guided_regex_and_grammar_on_completions(client):
    date = _complete(client, "The first moon landing was on", guided_regex=r"(19|20)[0-9]{2}-[01][0-9]-[0-3][0-9]")
    assert re.fullmatch(r"(19|20)[0-9]{2}-[01][0-9]-[0-3][0-9]", date.text) and date.finish_reason == "stop"
    grammar = 'start: "The answer is " NUMBER "."\nNUMBER: /[0-9]{1,3}/\n'
    answer = _complete(client, "6 times 7?", guided_grammar=grammar)
    assert re.fullmatch(r"The answer is [0-9]{1,3}\.", answer.text)


def test_vllm_structured_outputs_object(client):
    """vLLM's newer spelling of the same extras."""
    reply = _chat(client, "Is 'I love it' positive or negative?", max_tokens=10,
                  extra_body={"structured_outputs": {"choice": ["positive", "negative"]}})
    assert reply.choices[0].message.content in ("positive", "negative")
    person = _complete(client, "A person as JSON:", structured_outputs={"json": PERSON})
    jsonschema.validate(json.loads(person.text), PERSON)


def test_response_format_on_completions(client):
    choice = _complete(client, "A cat described as JSON with its name and colour:", response_format={"type": "json_object"})
    assert choice.finish_reason == "stop" and isinstance(json.loads(choice.text), dict)


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize(
    ("extras", "param"),
    [
        ({"response_format": {"type": "json_object"}, "guided_regex": "a+"}, "guided_regex"),
        ({"guided_choice": ["a", "b"], "guided_json": {"type": "object"}}, "guided_choice"),
        ({"guided_regex": "(ab"}, "guided_regex"),
        ({"guided_json": {"type": "foo"}}, "guided_json"),
        ({"guided_grammar": "start: nowhere"}, "guided_grammar"),
        ({"guided_choice": []}, "guided_choice"),
        ({"guided_regex": "a+", "structured_outputs": {"regex": "b+"}}, "structured_outputs.regex"),
        ({"structured_outputs": {"regex": "(ab"}}, "structured_outputs.regex"),
        ({"structured_outputs": {"json": {"type": "foo"}}}, "structured_outputs.json"),
    ],
)
def test_bad_or_conflicting_guided_extras_are_400_naming_the_param(http, route, extras, param):
    prompt = {"messages": [{"role": "user", "content": "hi"}]} if "chat" in route else {"prompt": "hi"}
    response = http.post(route, json={"model": CHAT_MODEL, "max_tokens": 5, **prompt, **extras})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


# The same capability through the native gRPC API.


def _grpc_request(content: str, structured: generation_pb2.StructuredOutput, max_new_tokens: int = 80):
    return generation_pb2.GenerateRequest(
        chat=generation_pb2.ChatPrompt(messages=[generation_pb2.ChatMessage(role="user", content=content)]),
        sampling=generation_pb2.SamplingParams(temperature=0),
        stopping=generation_pb2.StoppingCriteria(max_new_tokens=max_new_tokens),
        structured_output=structured,
    )


def test_grpc_json_schema_unary_and_stream(stub):
    request = _grpc_request("Invent a person.", generation_pb2.StructuredOutput(json_schema=json.dumps(PERSON)))
    sequence = stub.Generate(request).sequences[0]
    assert sequence.finish.reason == generation_pb2.FINISH_REASON_STOP
    jsonschema.validate(json.loads(sequence.text), PERSON)
    deltas = [event.delta for event in stub.GenerateStream(request) if event.HasField("delta")]
    assert "".join(delta.text for delta in deltas) == sequence.text


def test_grpc_json_object_regex_and_choice(stub):
    json_object = stub.Generate(_grpc_request("Return a JSON object with keys city and country for Paris.", generation_pb2.StructuredOutput(json_object=True), 100))
    assert isinstance(json.loads(json_object.sequences[0].text), dict)
    regex = stub.Generate(_grpc_request("What is today's date?", generation_pb2.StructuredOutput(regex=r"20[0-9]{2}-[01][0-9]-[0-3][0-9]")))
    assert regex.sequences[0].text[:2] == "20" and len(regex.sequences[0].text) == 10
    choice = generation_pb2.StructuredOutput(choice=generation_pb2.Choices(values=["positive", "negative"]))
    answer = stub.Generate(_grpc_request("Is 'I love it' positive or negative?", choice)).sequences[0]
    assert answer.text in ("positive", "negative") and answer.finish.reason == generation_pb2.FINISH_REASON_STOP


def test_grpc_lark_grammar(stub):
    grammar = 'start: "The answer is " NUMBER "."\nNUMBER: /[0-9]{1,3}/\n'
    sequence = stub.Generate(_grpc_request("What is 6 times 7?", generation_pb2.StructuredOutput(grammar=grammar))).sequences[0]
    assert sequence.text.startswith("The answer is ") and sequence.text.endswith(".")


@pytest.mark.parametrize(
    ("structured", "field"),
    [
        (generation_pb2.StructuredOutput(json_schema='{"type": "foo"}'), "structured_output.json_schema"),
        (generation_pb2.StructuredOutput(json_schema="{not json"), "structured_output.json_schema"),
        (generation_pb2.StructuredOutput(regex="(ab"), "structured_output.regex"),
        (generation_pb2.StructuredOutput(grammar="start: nowhere"), "structured_output.grammar"),
    ],
)
def test_grpc_invalid_schema_is_invalid_argument_with_field(stub, structured, field):
    with pytest.raises(grpc.RpcError) as caught:
        stub.Generate(_grpc_request("hi", structured))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(caught.value) == [field]
