"""Tool calls in chat prompts and in generated text.

Chat templates that know tools (they use `tools` and `tool_calls`) get the tools and the history
as they are. For a template without tool support (SmolLM2's, for one) the Hermes / Qwen
convention is written into the messages instead:
- the tool definitions go into the system message, with the instruction to answer a call as
  <tool_call>\\n{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call>;
- an assistant turn's `tool_calls` become such blocks after its content;
- consecutive `tool` messages become one user turn of <tool_response>…</tool_response> blocks.

`ToolCallParser` reads the generated text as it streams and separates the content from the
calls, which it reports as OpenAI-style deltas: the first delta of a call carries its id and
name (arguments "" or a first fragment), later deltas only fragments of the arguments text.
"""
from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

OPEN_TAG, CLOSE_TAG = "<tool_call>", "</tool_call>"

_SYSTEM_INSTRUCTIONS = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


def template_supports_tools(template: str | None) -> bool:
    """Whether the chat template renders tools and tool calls itself."""
    return bool(template) and "tools" in template and "tool_calls" in template  # type: ignore[operator]


def _call_block(call: dict[str, Any]) -> str:
    function = call.get("function", {})
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass
    return f"{OPEN_TAG}\n{json.dumps({'name': function.get('name', ''), 'arguments': arguments}, ensure_ascii=False)}\n{CLOSE_TAG}"


def hermes_messages(messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """`messages` with tools, tool calls and tool results written out as text (Hermes style),
    for a chat template that knows none of them."""
    out: list[dict[str, Any]] = []
    if tools:
        instructions = _SYSTEM_INSTRUCTIONS.format(tools="\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools))
        if messages and messages[0].get("role") == "system":
            system = messages[0].get("content") or ""
            out.append({**messages[0], "content": f"{system}\n\n{instructions}" if system else instructions})
            messages = messages[1:]
        else:
            out.append({"role": "system", "content": instructions})
    for message in messages:
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            blocks = [_call_block(call) for call in message["tool_calls"]]
            content = message.get("content") or ""
            text = "\n".join([content, *blocks] if content else blocks)
            out.append({k: v for k, v in message.items() if k != "tool_calls"} | {"content": text})
        elif role == "tool":
            block = f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"
            if out and out[-1].get("role") == "user" and out[-1].get("_tool_responses"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool_responses": True})
        else:
            out.append(dict(message))
    for message in out:
        message.pop("_tool_responses", None)
    return out


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolCallDelta:
    """A piece of a tool call: the first one of a call has `id` and `name` set."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""

    @property
    def first(self) -> bool:
        return bool(self.id)


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str


def merge_deltas(deltas: Sequence[ToolCallDelta]) -> list[ToolCall]:
    """Whole calls from their deltas, in index order."""
    calls: dict[int, ToolCall] = {}
    for delta in deltas:
        call = calls.setdefault(delta.index, ToolCall("", "", ""))
        call.id = call.id or delta.id
        call.name = call.name or delta.name
        call.arguments += delta.arguments
    return [calls[i] for i in sorted(calls)]


_STRING = r'"((?:[^"\\]|\\.)*)"'
# The start of a call whose name comes before its arguments: {"name": "f", "arguments": …
_HEADER = re.compile(r'\s*\{\s*"name"\s*:\s*' + _STRING + r'\s*,\s*"(?:arguments|parameters)"\s*:\s*')
_FIRST_KEY = re.compile(r"\s*\{\s*" + _STRING)
_SECOND_KEY = re.compile(r'\s*\{\s*"name"\s*:\s*' + _STRING + r"\s*,\s*" + _STRING)
_NAME_ONLY = re.compile(r'\s*\{\s*"name"\s*:\s*' + _STRING)


def _held_prefix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0


@dataclass
class _ArgumentScanner:
    """Finds where a JSON value ends in text that arrives in pieces."""

    depth: int = 0
    in_string: bool = False
    escaped: bool = False
    started: bool = False

    def scan(self, text: str) -> int | None:
        """The index in `text` just past the value, or None while it goes on. The value ends at
        its closing bracket, or (a scalar) before the first `,` or `}` outside strings."""
        for i, char in enumerate(text):
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
                    if self.depth == 0:
                        return i + 1
                continue
            if not self.started:
                if char.isspace():
                    continue
                self.started = True
            if char == '"':
                self.in_string = True
            elif char in "{[":
                self.depth += 1
            elif char in "}]":
                if self.depth == 0:
                    return i
                self.depth -= 1
                if self.depth == 0:
                    return i + 1
            elif char == "," and self.depth == 0:
                return i
        return None


@dataclass
class ToolCallParser:
    """Splits streamed text into content and tool calls (<tool_call>{…}</tool_call> blocks).

    feed() takes the next piece of text and returns (content, deltas) that are safe to send;
    finish() returns what was held back. Text that might still turn into a tag, and whitespace
    next to calls, is held back, so the content never shows markup. Arguments stream as they are
    generated when the call names its function first (always so under constrained decoding);
    otherwise the call is sent whole once complete.
    """

    new_id: Callable[[], str] = new_call_id
    calls: int = 0
    _state: str = "content"  # content | header | arguments | after | whole
    _buffer: str = ""
    _scanner: _ArgumentScanner = field(default_factory=_ArgumentScanner)
    _pending_ws: str = ""  # content whitespace held back
    _arguments_ws: str = ""  # arguments whitespace held back
    _arguments_begun: bool = False
    _dropped_ws: str = ""  # whitespace before the last <tool_call>
    _after_call: bool = False

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        self._buffer += text
        content: list[str] = []
        deltas: list[ToolCallDelta] = []
        while True:
            progressed = getattr(self, f"_step_{self._state}")(content, deltas, final=False)
            if not progressed:
                return "".join(content), deltas

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        content: list[str] = []
        deltas: list[ToolCallDelta] = []
        while getattr(self, f"_step_{self._state}")(content, deltas, final=True):
            pass
        return "".join(content), deltas

    # Each step consumes what it can of the buffer; True when it changed state (run again).

    def _emit_content(self, content: list[str], text: str, final: bool) -> None:
        """Content, holding back trailing whitespace (it may precede a call) until more follows."""
        text = self._pending_ws + text
        if self._after_call:  # no whitespace right after a call either
            text = text.lstrip()
            self._after_call = not text
        stripped = text.rstrip()
        self._pending_ws = text[len(stripped) :]
        if stripped:
            content.append(stripped)
        if final and self.calls == 0:
            content.append(self._pending_ws)
            self._pending_ws = ""

    def _step_content(self, content: list[str], deltas: list[ToolCallDelta], final: bool) -> bool:
        at = self._buffer.find(OPEN_TAG)
        if at >= 0:
            self._emit_content(content, self._buffer[:at], final=False)
            # Whitespace before a call is no content (unless the call proves to be no call).
            self._dropped_ws, self._pending_ws = self._pending_ws, ""
            self._buffer = self._buffer[at + len(OPEN_TAG) :]
            self._state = "header"
            return True
        keep = 0 if final else _held_prefix(self._buffer, OPEN_TAG)
        self._emit_content(content, self._buffer[: len(self._buffer) - keep], final)
        self._buffer = self._buffer[len(self._buffer) - keep :]
        return False

    def _start_call(self, deltas: list[ToolCallDelta], name: str, arguments: str = "") -> None:
        deltas.append(ToolCallDelta(self.calls, id=self.new_id(), name=name, arguments=arguments))
        self.calls += 1

    def _step_header(self, content: list[str], deltas: list[ToolCallDelta], final: bool) -> bool:
        header = _HEADER.match(self._buffer)
        if header:
            self._start_call(deltas, _unescape(header.group(1)))
            self._buffer = self._buffer[header.end() :]
            self._scanner = _ArgumentScanner()
            self._arguments_ws, self._arguments_begun = "", False
            self._state = "arguments"
            return True
        first, second = _FIRST_KEY.match(self._buffer), _SECOND_KEY.match(self._buffer)
        if (
            (first and _unescape(first.group(1)) != "name")
            or (second and _unescape(second.group(2)) not in ("arguments", "parameters"))
            or CLOSE_TAG in self._buffer
            or not re.match(r"\s*(\{|$)", self._buffer)
        ):
            self._state = "whole"
            return True
        if final:  # cut short (max tokens): a call if it got as far as its name, else nothing
            name = _NAME_ONLY.match(self._buffer)
            if name:
                self._start_call(deltas, _unescape(name.group(1)))
            self._buffer = ""
        return False

    def _step_arguments(self, content: list[str], deltas: list[ToolCallDelta], final: bool) -> bool:
        end = self._scanner.scan(self._buffer)
        piece = self._buffer if end is None else self._buffer[:end]
        self._buffer = "" if end is None else self._buffer[end:]
        # The arguments text runs from the value's first character to its last; whitespace at
        # the end of what arrived so far waits until more of the value follows.
        text = self._arguments_ws + (piece if self._arguments_begun else piece.lstrip())
        body = text.rstrip()
        self._arguments_ws = text[len(body) :] if end is None and not final else ""
        if body:
            self._arguments_begun = True
            last = deltas[-1] if deltas else None
            if last is not None and last.first and last.index == self.calls - 1 and not last.arguments:
                last.arguments = body
            else:
                deltas.append(ToolCallDelta(self.calls - 1, arguments=body))
        if end is None:
            return False
        self._state = "after"
        return True

    def _step_after(self, content: list[str], deltas: list[ToolCallDelta], final: bool) -> bool:
        at = self._buffer.find(CLOSE_TAG)
        if at < 0:
            if final:
                self._buffer = ""
            return False
        self._buffer = self._buffer[at + len(CLOSE_TAG) :]
        self._state = "content"
        self._after_call = True
        return True

    def _step_whole(self, content: list[str], deltas: list[ToolCallDelta], final: bool) -> bool:
        at = self._buffer.find(CLOSE_TAG)
        if at < 0 and not final:
            return False
        raw = self._buffer if at < 0 else self._buffer[:at]
        self._buffer = "" if at < 0 else self._buffer[at + len(CLOSE_TAG) :]
        self._state = "content"
        call = _parse_call(raw)
        if call is None:  # not a call after all: the model's text, markup included
            self._pending_ws += self._dropped_ws
            self._emit_content(content, OPEN_TAG + raw + ("" if at < 0 else CLOSE_TAG), final)
        else:
            self._start_call(deltas, *call)
            self._after_call = True
        return at >= 0


def _unescape(json_string_body: str) -> str:
    try:
        return json.loads(f'"{json_string_body}"')
    except ValueError:
        return json_string_body


def _parse_call(raw: str) -> tuple[str, str] | None:
    """(name, arguments JSON text) of a complete call, or None."""
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return value["name"], arguments
