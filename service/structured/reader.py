"""Tool calls out of a request's generated text, as tokenwire.v1 deltas and whole calls."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from service.engine.types import FinishReason, SequenceUpdate
from service.structured.tool_parser import ToolCallParser
from tokenwire.v1 import generation_pb2


@dataclass
class ToolCallReader:
    """Turns a request's engine updates into content and tool-call deltas, one parser per sequence."""

    finish_with_tool_calls: bool
    # The grammar lets the model write tool calls only: text outside them is markup of a call cut
    # short (max tokens), never content.
    calls_only: bool = False
    _parsers: dict[int, ToolCallParser] = field(default_factory=dict)

    def read(self, update: SequenceUpdate) -> tuple[SequenceUpdate, list[generation_pb2.ToolCallDelta], bool]:
        """(the update with only content as text, its tool-call deltas, whether the sequence
        finished after calling tools under auto / required)."""
        parser = self._parsers.setdefault(update.index, ToolCallParser())
        content, deltas = parser.feed(update.text)
        if update.finish is not None:
            more_content, more_deltas = parser.finish()
            content, deltas = content + more_content, deltas + more_deltas
        if self.calls_only:
            content = ""
        messages = [
            generation_pb2.ToolCallDelta(
                index=delta.index,
                id=delta.id,
                type="function" if delta.first else "",
                function=generation_pb2.FunctionCall(name=delta.name, arguments=delta.arguments),
            )
            for delta in deltas
        ]
        finished_with_calls = (
            self.finish_with_tool_calls
            and update.finish is not None
            and update.finish.reason == FinishReason.STOP
            and parser.calls > 0
        )
        return replace(update, text=content), messages, finished_with_calls


def merge_tool_call_deltas(
    calls: list[generation_pb2.ToolCall], deltas: list[generation_pb2.ToolCallDelta]
) -> None:
    """Adds deltas to the complete calls of a Sequence (a unary Generate)."""
    for delta in deltas:
        while len(calls) <= delta.index:
            calls.add(type="function")  # type: ignore[attr-defined]
        call = calls[delta.index]
        if delta.id:
            call.id, call.type = delta.id, delta.type or "function"
            call.function.name = delta.function.name
        call.function.arguments += delta.function.arguments
