"""The tool-call wire format: how a model writes its calls and reads the results, as text.

Chat templates that know tools (they use `tools` and `tool_calls`) get the tools and the history
as they are. For a template without tool support (SmolLM2's, for one) the format is written into
the messages instead (`messages_with_tools`):
- the tool definitions go into the system message, with the instruction to answer a call as
  <tool_call>\\n{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call>;
- an assistant turn's `tool_calls` become such blocks after its content;
- consecutive `tool` messages become one user turn of <tool_response>…</tool_response> blocks.

The grammar (grammar.py) and the parser (tool_parser.py) read the same `ToolCallFormat`. Another
format (a chat template's own, such as Llama 3.1's or Mistral's) is another instance of it.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ToolCallFormat:
    """A call is `open_tag` + `padding` + {"name": …, "arguments": {…}} + `padding` + `close_tag`;
    calls follow each other separated by `separator`. A tool result is `response_open` +
    `padding` + its text + `padding` + `response_close`."""

    open_tag: str
    close_tag: str
    padding: str
    separator: str
    response_open: str
    response_close: str
    # The system-prompt text that shows the model the tools: {tools} (one JSON line each), {open}
    # and {close} (the tags) are filled in.
    instructions: str

    @property
    def call_open(self) -> str:
        """What comes before a call's JSON."""
        return self.open_tag + self.padding

    @property
    def call_close(self) -> str:
        """What comes after a call's JSON."""
        return self.padding + self.close_tag

    def call_text(self, name: str, arguments: Any) -> str:
        call = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
        return self.call_open + call + self.call_close

    def response_text(self, content: str) -> str:
        return self.response_open + self.padding + content + self.padding + self.response_close

    def system_text(self, tools: Sequence[dict[str, Any]]) -> str:
        listed = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
        return self.instructions.format(tools=listed, open=self.open_tag, close=self.close_tag)


# The Hermes / Qwen convention.
HERMES = ToolCallFormat(
    open_tag="<tool_call>",
    close_tag="</tool_call>",
    padding="\n",
    separator="\n",
    response_open="<tool_response>",
    response_close="</tool_response>",
    instructions="""# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within {open}{close} XML tags:
{open}
{{"name": <function-name>, "arguments": <args-json-object>}}
{close}""",
)


def template_supports_tools(template: str | None) -> bool:
    """Whether the chat template renders tools and tool calls itself."""
    return bool(template) and "tools" in template and "tool_calls" in template  # type: ignore[operator]


def _call_text(call: dict[str, Any]) -> str:
    function = call.get("function", {})
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass
    return HERMES.call_text(function.get("name", ""), arguments)


def messages_with_tools(messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """`messages` with tools, tool calls and tool results written out as text in the HERMES
    format, for a chat template that knows none of them."""
    out: list[dict[str, Any]] = []
    if tools:
        instructions = HERMES.system_text(tools)
        if messages and messages[0].get("role") == "system":
            system = messages[0].get("content") or ""
            out.append({**messages[0], "content": f"{system}\n\n{instructions}" if system else instructions})
            messages = messages[1:]
        else:
            out.append({"role": "system", "content": instructions})
    responses_turn: dict[str, Any] | None = None  # the user turn that gathers consecutive results
    for message in messages:
        role = message.get("role")
        if role == "tool":
            block = HERMES.response_text(message.get("content") or "")
            if responses_turn is not None:
                responses_turn["content"] += "\n" + block
            else:
                responses_turn = {"role": "user", "content": block}
                out.append(responses_turn)
            continue
        responses_turn = None
        if role == "assistant" and message.get("tool_calls"):
            blocks = [_call_text(call) for call in message["tool_calls"]]
            content = message.get("content") or ""
            text = "\n".join([content, *blocks] if content else blocks)
            out.append({k: v for k, v in message.items() if k != "tool_calls"} | {"content": text})
        else:
            out.append(dict(message))
    return out
