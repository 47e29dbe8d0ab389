"""The streaming tool-call parser: content and calls, however the text is split."""
from __future__ import annotations

import itertools
import json
import random

import pytest

from service.structured.tool_parser import ParsedCallDelta, ToolCallParser

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris, FR", "n": [1, {"a": "}"}]}}\n</tool_call>'


def _whole_calls(deltas: list[ParsedCallDelta]) -> list[tuple[str, str, str]]:
    """(id, name, arguments) of each whole call, in index order."""
    calls: dict[int, list[str]] = {}
    for delta in deltas:
        call = calls.setdefault(delta.index, ["", "", ""])
        call[0], call[1] = call[0] or delta.id, call[1] or delta.name
        call[2] += delta.arguments
    return [tuple(calls[i]) for i in sorted(calls)]


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
        ("Sure.\n" + CALL, "Sure.", [("call_0", "get_weather", '{"city": "Paris, FR", "n": [1, {"a": "}"}]}')]),
        (
            '<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name": "b", "arguments": {"x": "y \\" z"}}\n</tool_call>',
            "",
            [("call_0", "a", "{}"), ("call_1", "b", '{"x": "y \\" z"}')],
        ),
        # Arguments first: sent whole once the call is complete.
        ('<tool_call>\n{"arguments": {"q": 1}, "name": "late"}\n</tool_call> after', "after", [("call_0", "late", '{"q": 1}')]),
        # Not JSON: the model's text, markup and all.
        ("x <tool_call> not json </tool_call> y", "x <tool_call> not json </tool_call> y", []),
        # Cut short by max tokens: the call so far.
        ('<tool_call>\n{"name": "trunc", "arguments": {"city": "Par', "", [("call_0", "trunc", '{"city": "Par')]),
        ("a <tool_ca", "a <tool_ca", []),
        # Cut short before the name: no call, and no markup in the content.
        ('Hm.\n<tool_call>\n{"na', "Hm.", []),
        ('<tool_call>\n{"name": "p", "parameters": {"k": true}}\n</tool_call>', "", [("call_0", "p", '{"k": true}')]),
    ],
)
def test_content_and_calls_are_the_same_however_the_text_is_split(text, content, calls):
    assert _parse(text)[0] == content and _whole_calls(_parse(text)[1]) == calls
    for seed in range(25):
        rng = random.Random(seed)
        pieces, left = [], len(text)
        while left > 0:
            pieces.append(min(left, rng.randint(1, 5)))
            left -= pieces[-1]
        got_content, deltas = _parse(text, pieces)
        assert got_content == content and _whole_calls(deltas) == calls


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
    for _, _, arguments in _whole_calls(deltas):
        assert json.loads(arguments)["city"] == "Paris, FR"
    indexes = [delta.index for delta in deltas]
    assert indexes == sorted(indexes)
