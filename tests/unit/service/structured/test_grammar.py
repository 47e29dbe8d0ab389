"""Constrained decoding: the llguidance compiler and constraints, alone and in the real engine."""
from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from service.structured.grammar import (
    ConstraintCompiler,
    GrammarError,
    ToolChoice,
    ToolSchema,
    tool_call_grammar,
    tool_call_schema,
)
from service.engine.types import FinishReason, GenerationRequest, SamplingParams, StoppingParams

GREEDY = SamplingParams(temperature=0.0)
WEATHER = ToolSchema(
    "get_weather",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"$ref": "#/$defs/unit"}},
        "required": ["city"],
        "$defs": {"unit": {"enum": ["celsius", "fahrenheit"]}},
    },
)
TIME = ToolSchema(
    "get_time",
    {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"], "additionalProperties": False},
)
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "role", "tags", "address"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def compiler(tokenizer):
    """The default model's compiler, from its tokenizer alone (its logits are len(tokenizer) wide)."""
    return ConstraintCompiler(tokenizer, 0, [tokenizer.eos_token_id])


def _allowed(constraint, words: int) -> set[int]:
    bitmask = torch.full((2, words), -1, dtype=torch.int32)
    constraint.fill_bitmask(bitmask, 1)
    assert bool((bitmask[0] == -1).all()), "another row was touched"
    bits = (bitmask[1].unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1
    return set(bits.flatten().nonzero().flatten().tolist())


def _walk(compiler, tokenizer, factory, text: str, eos: bool = False):
    """Feeds `text`'s tokens through a fresh constraint, checking each was allowed."""
    constraint = factory()
    for token in tokenizer.encode(text, add_special_tokens=False):
        assert token in _allowed(constraint, compiler.words), f"{tokenizer.decode([token])!r} refused in {text!r}"
        constraint.accept(token)
    if eos:
        assert tokenizer.eos_token_id in _allowed(constraint, compiler.words)
        constraint.accept(tokenizer.eos_token_id)
    return constraint


def _refused(compiler, tokenizer, factory, text: str) -> bool:
    constraint = factory()
    for token in tokenizer.encode(text, add_special_tokens=False):
        if token not in _allowed(constraint, compiler.words):
            return True
        constraint.accept(token)
    return False


def test_the_bitmask_covers_the_models_vocabulary(compiler, generation_model):
    # The served model's own compiler, as loading built it, and the tokenizer-only one here.
    served = generation_model.constraints
    assert served.words == compiler.words == (generation_model.vocab_size + 31) // 32 == 49152 // 32


def test_json_schema_accepts_valid_json_without_whitespace_only(compiler, tokenizer):
    factory = compiler.json_schema(PERSON)
    valid = {"name": "Ann", "age": 33, "role": "admin", "tags": ["a"], "address": {"city": "Paris"}}
    done = _walk(compiler, tokenizer, factory, json.dumps(valid))
    assert done.is_terminated()  # nothing but EOS may follow a complete value
    assert _refused(compiler, tokenizer, factory, '{"name": "Ann", "age": 130')  # over the maximum
    assert _refused(compiler, tokenizer, factory, '{"name": "Ann", "age": 3, "role": "root"')  # not in the enum
    assert _refused(compiler, tokenizer, factory, '{ "name"')  # no whitespace
    assert _refused(compiler, tokenizer, factory, '{"name": "Ann",  "age"')
    assert _refused(compiler, tokenizer, factory, '{"age": 3')  # properties in schema order


def test_compiled_grammars_are_cached_and_each_sequence_gets_a_fresh_state(compiler, tokenizer):
    first = compiler.json_object()
    cached = len(compiler._cache)
    second = compiler.json_object()
    assert len(compiler._cache) == cached  # one entry per grammar text
    a, b = first(), second()
    a.accept(tokenizer.encode("{", add_special_tokens=False)[0])
    # b did not move with a: it still may start with "{".
    assert tokenizer.encode("{", add_special_tokens=False)[0] in _allowed(b, compiler.words)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda c: c.json_schema('{"type": "foo"}'), "Invalid type"),
        (lambda c: c.json_schema("{not json"), "not valid JSON"),
        (lambda c: c.json_schema([1, 2]), "must be a JSON object"),
        (lambda c: c.json_schema({"type": "object", "properties": {"a": {"$ref": "#/nope"}}}), "nope"),
        (lambda c: c.regex("(ab"), "unclosed group"),
        (lambda c: c.grammar("start: missing_rule"), "unknown name"),
        (lambda c: c.choice([]), "at least one option"),
        (lambda c: c.tool_calls([ToolSchema("f", {"type": 5})], ToolChoice.AUTO), "Tool 'f'"),
    ],
)
def test_invalid_schemas_and_grammars_raise_grammar_error(compiler, build, message):
    with pytest.raises(GrammarError, match=message):
        build(compiler)


def test_regex_and_choice(compiler, tokenizer):
    assert _walk(compiler, tokenizer, compiler.regex(r"[0-9]{3}-[a-z]+"), "123-abc", eos=True).is_terminated()
    assert _refused(compiler, tokenizer, compiler.regex(r"[0-9]{3}"), "12a")
    assert _walk(compiler, tokenizer, compiler.choice(["red", 'say "hi"']), 'say "hi"').is_terminated()
    assert _refused(compiler, tokenizer, compiler.choice(["red", "green"]), "blue")


def test_tool_call_schema_puts_the_name_first_and_rebases_refs():
    schema = tool_call_schema([WEATHER, TIME])
    first = schema["anyOf"][0]
    assert list(first["properties"]) == ["name", "arguments"] and first["properties"]["name"] == {"const": "get_weather"}
    assert first["properties"]["arguments"]["properties"]["unit"]["$ref"] == "#/anyOf/0/properties/arguments/$defs/unit"
    assert tool_call_schema([WEATHER])["properties"]["arguments"]["properties"]["unit"]["$ref"] == (
        "#/properties/arguments/$defs/unit"
    )


def test_required_tool_calls(compiler, tokenizer):
    factory = compiler.tool_calls([WEATHER, TIME], ToolChoice.REQUIRED)
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'
    _walk(compiler, tokenizer, factory, call + "\n" + call.replace("Paris", "Rome"), eos=True)
    assert _refused(compiler, tokenizer, factory, "Sure")  # no text first
    assert _refused(compiler, tokenizer, factory, call.replace("celsius", "kelvin"))  # $ref resolved
    assert _refused(compiler, tokenizer, factory, call.replace("get_weather", "get_wether"))
    single = compiler.tool_calls([WEATHER, TIME], ToolChoice.REQUIRED, parallel=False)
    assert _walk(compiler, tokenizer, single, call).is_terminated()


def test_named_tool_call_allows_that_function_only(compiler, tokenizer):
    factory = compiler.tool_calls([TIME], ToolChoice.NAMED, parallel=False)
    done = _walk(compiler, tokenizer, factory, '<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n</tool_call>')
    assert done.is_terminated()
    assert _refused(compiler, tokenizer, factory, '<tool_call>\n{"name": "get_weather"')
    assert _refused(compiler, tokenizer, factory, '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}')


def test_auto_allows_text_and_checks_calls_once_started(compiler, tokenizer):
    factory = compiler.tool_calls([WEATHER, TIME], ToolChoice.AUTO)
    _walk(compiler, tokenizer, factory, "Hello! No tools needed { here }.", eos=True)
    _walk(compiler, tokenizer, factory, 'Let me look.<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n</tool_call>', eos=True)
    assert _refused(compiler, tokenizer, factory, 'Let me look.<tool_call>\n{"name": "get_time", "arguments": {"tz": 5}}')
    with_json = compiler.tool_calls([TIME], ToolChoice.AUTO, response_schema={"type": "object", "properties": {"a": {"type": "integer"}}})
    assert _walk(compiler, tokenizer, with_json, '{"a": 1}').is_terminated()
    assert _refused(compiler, tokenizer, with_json, "plain text")
    assert "lazy" in tool_call_grammar([TIME], ToolChoice.AUTO)
    assert "lazy" not in tool_call_grammar([TIME], ToolChoice.REQUIRED)


def test_a_rejected_token_terminates_instead_of_looping(compiler, tokenizer):
    constraint = compiler.choice(["yes"])()
    constraint.accept(tokenizer.encode("no", add_special_tokens=False)[0])
    assert constraint.is_terminated()


def _request(tokenizer, text: str, constraint, max_new_tokens: int, n: int = 1, sampling=GREEDY) -> GenerationRequest:
    ids = tokenizer.encode(
        tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False),
        add_special_tokens=False,
    )
    return GenerationRequest(
        request_id="c", prompt_ids=tuple(ids), sampling=sampling,
        stopping=StoppingParams(max_new_tokens=max_new_tokens), n=n, seed=7, constraint=constraint,
    )


async def _texts(engine, request):
    texts: dict[int, str] = {}
    finishes = {}
    async for update in engine.submit(request):
        texts[update.index] = texts.get(update.index, "") + update.text
        if update.finish is not None:
            finishes[update.index] = update.finish
    return texts, finishes


async def test_the_engine_output_validates_against_the_schema_even_when_sampling(generation_model, tokenizer):
    request = _request(
        tokenizer, "Describe a user of our website.", generation_model.constraints.json_schema(PERSON), 120, n=3,
        sampling=SamplingParams(temperature=1.0),
    )
    texts, finishes = await _texts(generation_model.engine, request)
    for index in range(3):
        assert finishes[index].reason is FinishReason.STOP, texts[index]
        jsonschema.validate(json.loads(texts[index]), PERSON)
    assert len(generation_model.constraints._cache) >= 1
