"""The generated text of a chat turn with tools, split into content and tool calls as it streams.

`ToolCallParser` reports the calls as OpenAI-style deltas: the first delta of a call carries its
id and name (arguments "" or a first fragment), later deltas only fragments of the arguments
text. Calls are read in the HERMES format (tool_format.py).
"""
from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from service.structured.tool_format import HERMES


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ParsedCallDelta:
    """A piece of a tool call: the first one of a call has `id` and `name` set."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""

    @property
    def first(self) -> bool:
        return bool(self.id)


# What the parser is reading: content, a call's opening (up to its name), its arguments, the rest
# of a call until its closing tag, or a call read whole at its closing tag (arguments first).
_State = Literal["content", "header", "arguments", "after", "whole"]
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
    """Splits streamed text into content and tool calls (HERMES blocks: open tag, JSON, close tag).

    feed() takes the next piece of text and returns (content, deltas) that are safe to send;
    finish() returns what was held back. Text that might still turn into a tag, and whitespace
    next to calls, is held back, so the content never shows markup. Arguments stream as they are
    generated when the call names its function first (always so under constrained decoding);
    otherwise the call is sent whole once complete.
    """

    new_id: Callable[[], str] = new_call_id
    calls: int = 0
    _state: _State = "content"
    _buffer: str = ""
    _scanner: _ArgumentScanner = field(default_factory=_ArgumentScanner)
    _pending_ws: str = ""  # content whitespace held back
    _arguments_ws: str = ""  # arguments whitespace held back
    _arguments_begun: bool = False
    _dropped_ws: str = ""  # whitespace before the last opening tag
    _after_call: bool = False

    def feed(self, text: str) -> tuple[str, list[ParsedCallDelta]]:
        self._buffer += text
        content: list[str] = []
        deltas: list[ParsedCallDelta] = []
        while True:
            progressed = getattr(self, f"_step_{self._state}")(content, deltas, final=False)
            if not progressed:
                return "".join(content), deltas

    def finish(self) -> tuple[str, list[ParsedCallDelta]]:
        content: list[str] = []
        deltas: list[ParsedCallDelta] = []
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

    def _step_content(self, content: list[str], deltas: list[ParsedCallDelta], final: bool) -> bool:
        at = self._buffer.find(HERMES.open_tag)
        if at >= 0:
            self._emit_content(content, self._buffer[:at], final=False)
            # Whitespace before a call is no content (unless the call proves to be no call).
            self._dropped_ws, self._pending_ws = self._pending_ws, ""
            self._buffer = self._buffer[at + len(HERMES.open_tag) :]
            self._state = "header"
            return True
        keep = 0 if final else _held_prefix(self._buffer, HERMES.open_tag)
        self._emit_content(content, self._buffer[: len(self._buffer) - keep], final)
        self._buffer = self._buffer[len(self._buffer) - keep :]
        return False

    def _start_call(self, deltas: list[ParsedCallDelta], name: str, arguments: str = "") -> None:
        deltas.append(ParsedCallDelta(self.calls, id=self.new_id(), name=name, arguments=arguments))
        self.calls += 1

    def _step_header(self, content: list[str], deltas: list[ParsedCallDelta], final: bool) -> bool:
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
            or HERMES.close_tag in self._buffer
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

    def _step_arguments(self, content: list[str], deltas: list[ParsedCallDelta], final: bool) -> bool:
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
                deltas.append(ParsedCallDelta(self.calls - 1, arguments=body))
        if end is None:
            return False
        self._state = "after"
        return True

    def _step_after(self, content: list[str], deltas: list[ParsedCallDelta], final: bool) -> bool:
        at = self._buffer.find(HERMES.close_tag)
        if at < 0:
            if final:
                self._buffer = ""
            return False
        self._buffer = self._buffer[at + len(HERMES.close_tag) :]
        self._state = "content"
        self._after_call = True
        return True

    def _step_whole(self, content: list[str], deltas: list[ParsedCallDelta], final: bool) -> bool:
        at = self._buffer.find(HERMES.close_tag)
        if at < 0 and not final:
            return False
        raw = self._buffer if at < 0 else self._buffer[:at]
        self._buffer = "" if at < 0 else self._buffer[at + len(HERMES.close_tag) :]
        self._state = "content"
        call = _parse_call(raw)
        if call is None:  # not a call after all: the model's text, markup included
            self._pending_ws += self._dropped_ws
            self._emit_content(content, HERMES.open_tag + raw + ("" if at < 0 else HERMES.close_tag), final)
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
