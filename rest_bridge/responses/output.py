"""A response's output items, built from its sequence's text and tool calls, with the stream
events that tell them in OpenAI's order (pure; no I/O).

Streamed or not, a response is built the same way, so both give the same items:

    response.created, response.in_progress
    per item: response.output_item.added
      message:       response.content_part.added, response.output_text.delta…,
                     response.output_text.done, response.content_part.done
      function call: response.function_call_arguments.delta…, response.function_call_arguments.done
    response.output_item.done
    response.completed, or response.incomplete (max_output_tokens)

Every event carries a `sequence_number`, 0 first. The model writes its text before its tool
calls, so a message item (if any) comes first, then one function_call item per call.
"""
from __future__ import annotations

import copy
import time
from typing import Any

from rest_bridge.ids import new_id
from tokenwire.v1 import common_pb2, generation_pb2

Json = dict[str, Any]

# Finishes of a whole answer; any other (the token limit, the context, the worker's shutdown)
# leaves the response incomplete.
_COMPLETE = frozenset({generation_pb2.FINISH_REASON_STOP, generation_pb2.FINISH_REASON_TOOL_CALLS})


def usage_json(usage: common_pb2.Usage) -> Json:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
        # The reference provider's extra, as on chat completions.
        "estimated_cost": usage.estimated_cost,
    }


def _text_part(text: str) -> Json:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


class ResponseBuilder:
    """Feed it the text and tool-call pieces of one sequence in order, then `finish`; each call
    returns the stream events it makes."""

    def __init__(self, response: Json) -> None:
        """`response`: the response object before any output (status in_progress, output [])."""
        self.response = response
        self._items: list[Json] = []
        # The item being written: the message (its text so far) or the last function call.
        self._open: Json | None = None
        self._text = ""
        self._sequence_number = 0

    def _event(self, kind: str, **fields: Any) -> Json:
        # Snapshots (an item, a part, the response) are copied, as they change after the event.
        snapshots = {key: copy.deepcopy(value) for key, value in fields.items() if isinstance(value, dict)}
        event = {"type": kind, "sequence_number": self._sequence_number, **fields, **snapshots}
        self._sequence_number += 1
        return event

    def _item_event(self, kind: str, item: Json, **fields: Any) -> Json:
        return self._event(kind, item_id=item["id"], output_index=self._items.index(item), **fields)

    def started(self) -> list[Json]:
        return [
            self._event("response.created", response=self.response),
            self._event("response.in_progress", response=self.response),
        ]

    def _add(self, item: Json) -> list[Json]:
        events = self._close("completed")
        self._items.append(item)
        self._open = item
        return [*events, self._event("response.output_item.added", output_index=len(self._items) - 1, item=item)]

    def _close(self, status: str) -> list[Json]:
        """Ends the open item with `status` (completed, or incomplete when the answer was cut)."""
        item, self._open = self._open, None
        if item is None:
            return []
        item["status"] = status
        if item["type"] == "message":
            part = _text_part(self._text)
            item["content"] = [part]
            events = [
                self._item_event("response.output_text.done", item, content_index=0, text=self._text, logprobs=[]),
                self._item_event("response.content_part.done", item, content_index=0, part=part),
            ]
        else:
            events = [self._item_event("response.function_call_arguments.done", item, arguments=item["arguments"])]
        return [*events, self._event("response.output_item.done", output_index=self._items.index(item), item=item)]

    def _open_message(self) -> list[Json]:
        item = {"id": new_id("msg_"), "type": "message", "status": "in_progress", "content": [], "role": "assistant"}
        events = self._add(item)
        self._text = ""
        return [*events, self._item_event("response.content_part.added", item, content_index=0, part=_text_part(""))]

    def text(self, delta: str) -> list[Json]:
        if not delta:
            return []
        events = [] if self._open is not None and self._open["type"] == "message" else self._open_message()
        self._text += delta
        assert self._open is not None
        return [
            *events,
            self._item_event("response.output_text.delta", self._open, content_index=0, delta=delta, logprobs=[]),
        ]

    def call_started(self, call_id: str, name: str) -> list[Json]:
        item = {
            "id": new_id("fc_"),
            "type": "function_call",
            "status": "in_progress",
            "arguments": "",
            "call_id": call_id,
            "name": name,
        }
        return self._add(item)

    def call_arguments(self, fragment: str) -> list[Json]:
        if not fragment or self._open is None or self._open["type"] != "function_call":
            return []
        self._open["arguments"] += fragment
        return [self._item_event("response.function_call_arguments.delta", self._open, delta=fragment)]

    def tool_call_delta(self, delta: generation_pb2.ToolCallDelta) -> list[Json]:
        """A streamed piece of a call: its first carries the call's id and name."""
        events = self.call_started(delta.id, delta.function.name) if delta.id else []
        return [*events, *self.call_arguments(delta.function.arguments)]

    def finish(self, reason: generation_pb2.FinishReason.ValueType, usage: common_pb2.Usage) -> list[Json]:
        """Ends the output; the last event carries the whole response (also in `self.response`)."""
        complete = reason in _COMPLETE
        events = [] if self._items else self._open_message()  # an empty answer is an empty message
        events += self._close("completed" if complete else "incomplete")
        self.response.update(
            status="completed" if complete else "incomplete",
            completed_at=int(time.time()) if complete else None,
            incomplete_details=None if complete else {"reason": "max_output_tokens"},
            output=copy.deepcopy(self._items),
            usage=usage_json(usage),
        )
        kind = "response.completed" if complete else "response.incomplete"
        return [*events, self._event(kind, response=self.response)]

    def failed(self, status: int, code: str | None, message: str, param: str | None) -> list[Json]:
        """Ends a stream that failed midway (after its first byte): an `error` event, then
        `response.failed` with what was written so far."""
        self.response.update(
            status="failed",
            error={"code": "rate_limit_exceeded" if status == 429 else "server_error", "message": message},
            output=copy.deepcopy(self._items),
        )
        return [
            self._event("error", code=code, message=message, param=param),
            self._event("response.failed", response=self.response),
        ]

    def whole(self, sequence: generation_pb2.Sequence, usage: common_pb2.Usage) -> Json:
        """The response of a sequence generated at once (no stream)."""
        self.text(sequence.text)
        for call in sequence.tool_calls:
            self.call_started(call.id, call.function.name)
            self.call_arguments(call.function.arguments)
        self.finish(sequence.finish.reason, usage)
        return self.response
