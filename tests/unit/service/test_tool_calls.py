"""Tool calls: the streaming parser and how tools and tool messages reach the chat template."""
from __future__ import annotations

import itertools
import json
import random

import pytest

from service.models.prompting import render_chat
from service.models.tool_calls import (
    ToolCall,
    ToolCallParser,
    hermes_messages,
    merge_deltas,
    template_supports_tools,
)

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris, FR", "n": [1, {"a": "}"}]}}\n</tool_call>'
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def _parse(text: str, pieces: list[int] | None = None):
    counter = itertools.count()
    parser = ToolCallParser(new_id=lambda: f"call_{next(counter)}")
    content, deltas, at = [], [], 0
    for size in pieces or [len(text)]:
        piece_content, piece_deltas = parser.feed(text[at : at + size])
        at += size
        content.append(piece_content)
        deltas += piece_deltas
    rest_content, rest_deltas = parser.finish()
    return "".join(content) + rest_content, deltas


@pytest.mark.parametrize(
    ("text", "content", "calls"),
    [
        ("Plain text, no calls.  ", "Plain text, no calls.  ", []),
        ("Sure.\n" + CALL, "Sure.", [ToolCall("call_0", "get_weather", '{"city": "Paris, FR", "n": [1, {"a": "}"}]}')]),
        (
            '<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name": "b", "arguments": {"x": "y \\" z"}}\n</tool_call>',
            "",
            [ToolCall("call_0", "a", "{}"), ToolCall("call_1", "b", '{"x": "y \\" z"}')],
        ),
        # Arguments first: sent whole once the call is complete.
        ('<tool_call>\n{"arguments": {"q": 1}, "name": "late"}\n</tool_call> after', "after", [ToolCall("call_0", "late", '{"q": 1}')]),
        # Not JSON: the model's text, markup and all.
        ("x <tool_call> not json </tool_call> y", "x <tool_call> not json </tool_call> y", []),
        # Cut short by max tokens: the call so far.
        ('<tool_call>\n{"name": "trunc", "arguments": {"city": "Par', "", [ToolCall("call_0", "trunc", '{"city": "Par')]),
        ("a <tool_ca", "a <tool_ca", []),
        # Cut short before the name: no call, and no markup in the content.
        ('Hm.\n<tool_call>\n{"na', "Hm.", []),
        ('<tool_call>\n{"name": "p", "parameters": {"k": true}}\n</tool_call>', "", [ToolCall("call_0", "p", '{"k": true}')]),
    ],
)
def test_content_and_calls_are_the_same_however_the_text_is_split(text, content, calls):
    assert _parse(text) == (content, _parse(text)[1])
    assert _parse(text)[0] == content and merge_deltas(_parse(text)[1]) == calls
    for seed in range(25):
        rng = random.Random(seed)
        pieces, left = [], len(text)
        while left > 0:
            pieces.append(min(left, rng.randint(1, 5)))
            left -= pieces[-1]
        got_content, deltas = _parse(text, pieces)
        assert got_content == content and merge_deltas(deltas) == calls


def test_deltas_follow_openai_rules_and_markup_never_leaks():
    text = "Let me check." + CALL + "\n" + CALL.replace("get_weather", "get_time")
    counter = itertools.count()
    parser = ToolCallParser(new_id=lambda: f"call_{next(counter)}")
    seen_content, deltas = "", []
    for char in text:  # one character at a time: the worst case for holding back
        content, new = parser.feed(char)
        seen_content += content
        deltas += new
        assert "<" not in seen_content
    content, new = parser.finish()
    seen_content += content
    deltas += new
    assert seen_content == "Let me check."
    firsts = [delta for delta in deltas if delta.first]
    assert [(d.index, d.id, d.name) for d in firsts] == [(0, "call_0", "get_weather"), (1, "call_1", "get_time")]
    for delta in deltas:
        if not delta.first:
            assert (delta.id, delta.name) == ("", "") and delta.arguments
    # Each call's first delta comes before its fragments; the fragments join to valid JSON.
    for call in merge_deltas(deltas):
        assert json.loads(call.arguments)["city"] == "Paris, FR"
    indexes = [delta.index for delta in deltas]
    assert indexes == sorted(indexes)


def test_template_without_tool_support_gets_hermes_messages(tokenizer):
    assert not template_supports_tools(tokenizer.chat_template)
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        {"role": "tool", "tool_call_id": "call_2", "content": "sunny"},
    ]
    prompt = render_chat(tokenizer, messages, tools=[WEATHER_TOOL])
    assert prompt.startswith("<|im_start|>system\n# Tools")
    assert json.dumps(WEATHER_TOOL) in prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>' in prompt
    # Consecutive tool results: one user turn.
    assert "<|im_start|>user\n<tool_response>\n{\"temp\": 21}\n</tool_response>\n<tool_response>\nsunny\n</tool_response><|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_an_existing_system_message_keeps_its_text_before_the_tools():
    out = hermes_messages([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}], [WEATHER_TOOL])
    assert out[0]["role"] == "system" and out[0]["content"].startswith("Be brief.\n\n# Tools")
    assert out[1] == {"role": "user", "content": "hi"}
    assert hermes_messages([{"role": "user", "content": "hi"}], None) == [{"role": "user", "content": "hi"}]


class _ToolTemplateTokenizer:
    """A stand-in for a tokenizer whose template renders tools itself."""

    chat_template = "{% for m in messages %}{{ m.role }}{% endfor %}{{ tools | tojson }}{{ tool_calls }}"

    def __init__(self) -> None:
        self.seen = None

    def apply_chat_template(self, messages, tokenize, add_generation_prompt, **options):
        self.seen = (messages, options)
        return "rendered"


def test_template_with_tool_support_gets_tools_and_history_as_they_are():
    fake = _ToolTemplateTokenizer()
    messages = [{"role": "tool", "content": "42", "tool_call_id": "c"}]
    assert render_chat(fake, messages, tools=[WEATHER_TOOL]) == "rendered"
    assert fake.seen == (messages, {"tools": [WEATHER_TOOL]})
