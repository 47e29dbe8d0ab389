"""Tool calls out of engine updates: protobuf deltas, whole calls, and when a turn finished with calls."""
from __future__ import annotations

from service.engine.types import Finish, FinishReason, SequenceUpdate
from service.structured.grammar import ToolChoice
from service.structured.plan import OutputPlan
from service.structured.reader import ToolCallReader, merge_tool_call_deltas
from tokenwire.v1 import generation_pb2

CALL = '<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n</tool_call>'


def _read(reader: ToolCallReader, pieces: list[str], reason: FinishReason = FinishReason.STOP):
    """(content, the merged calls of a unary answer, whether the sequence finished with calls)."""
    content, calls, finished_with_calls = "", generation_pb2.Sequence().tool_calls, False
    for i, piece in enumerate(pieces):
        finish = Finish(reason) if i == len(pieces) - 1 else None
        update, deltas, finished_with_calls = reader.read(SequenceUpdate(index=0, text=piece, token_ids=(i,), finish=finish))
        content += update.text
        merge_tool_call_deltas(calls, deltas)
    return content, calls, finished_with_calls


def test_calls_become_deltas_and_whole_calls_and_finish_the_turn_under_auto():
    content, calls, finished = _read(ToolCallReader(finish_with_tool_calls=True), ["Let me check.", CALL[:20], CALL[20:]])
    assert content == "Let me check." and finished
    [call] = calls
    assert call.id.startswith("call_") and call.type == "function"
    assert (call.function.name, call.function.arguments) == ("get_time", '{"tz": "UTC"}')


def test_text_alone_or_a_cut_turn_does_not_finish_with_calls():
    assert _read(ToolCallReader(finish_with_tool_calls=True), ["Hello", " there."])[::2] == ("Hello there.", False)
    cut = _read(ToolCallReader(finish_with_tool_calls=True), [CALL[:40]], FinishReason.LENGTH)
    assert cut[1][0].function.name == "get_time" and not cut[2]


def test_calls_only_drops_the_markup_of_a_call_cut_before_its_name():
    reader = ToolCallReader(finish_with_tool_calls=False, calls_only=True)
    assert _read(reader, ['<tool_call>\n{"na'], FinishReason.LENGTH) == ("", [], False)


def test_each_tool_choice_reads_the_output_its_way():
    assert OutputPlan().tool_call_reader() is None  # no tools: the text is all content
    readers = {choice: OutputPlan(tool_choice=choice).tool_call_reader() for choice in ToolChoice if choice is not ToolChoice.NONE}
    flags = {choice: (reader.finish_with_tool_calls, reader.calls_only) for choice, reader in readers.items()}
    assert flags == {ToolChoice.AUTO: (True, False), ToolChoice.REQUIRED: (True, True), ToolChoice.NAMED: (False, True)}
