"""The tool-call format on the prompt side: how tools, calls and results reach a chat template."""
from __future__ import annotations

import json

from service.structured.tool_format import messages_with_tools, template_supports_tools
from service.text.chat import render_chat

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_template_without_tool_support_gets_messages_with_tools(tokenizer):
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
    out = messages_with_tools([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}], [WEATHER_TOOL])
    assert out[0]["role"] == "system" and out[0]["content"].startswith("Be brief.\n\n# Tools")
    assert out[1] == {"role": "user", "content": "hi"}
    assert messages_with_tools([{"role": "user", "content": "hi"}], None) == [{"role": "user", "content": "hi"}]


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
