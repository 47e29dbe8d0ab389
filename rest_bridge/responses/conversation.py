"""Responses input → the chat request the worker runs (pure functions).

Input items are kept in one form, OpenAI's item objects with ids: they are what
GET /v1/responses/{id}/input_items lists, and what a later response that names this one in
previous_response_id reads back (with this one's output items) to rebuild the conversation.
"""
from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from rest_bridge import schemas, translate
from rest_bridge.errors import from_validation_error
from rest_bridge.ids import new_id
from rest_bridge.responses.schemas import (
    FunctionCallItem,
    FunctionCallOutputItem,
    InputItem,
    MessageItem,
    NamedFunction,
    ResponseCreateRequest,
)

Json = dict[str, Any]

# Worker field paths → Responses parameters (a chat prompt underneath).
RESPONSE_PARAMS = {
    **translate.CHAT_PARAMS,
    **dict.fromkeys(("prompt", "chat", "chat.messages"), "input"),
    "stopping.max_new_tokens": "max_output_tokens",
    "tool_choice.function_name": "tool_choice.name",
    **dict.fromkeys(translate.STRUCTURED_OUTPUT_FIELDS, "text.format"),
}
# The fields a response's generation takes as chat takes them.
_SHARED_FIELDS = frozenset(schemas.SamplingRequest.model_fields) - {"stream"}


def _item(kind: str, prefix: str, given_id: str | None, **fields: Any) -> Json:
    return {"id": given_id or new_id(prefix), "type": kind, **fields, "status": "completed"}


def item_json(item: InputItem) -> Json:
    """An input item as OpenAI lists it, with an id (its own, else a new one)."""
    if isinstance(item, MessageItem):
        content = [
            {"type": part.type, "text": part.text, **({"annotations": []} if part.type == "output_text" else {})}
            for part in item.content
        ]
        return _item("message", "msg_", item.id, role=item.role, content=content)
    if isinstance(item, FunctionCallItem):
        return _item("function_call", "fc_", item.id, call_id=item.call_id, name=item.name, arguments=item.arguments)
    assert isinstance(item, FunctionCallOutputItem)
    output = item.output if isinstance(item.output, str) else [part.model_dump() for part in item.output]
    return _item("function_call_output", "fco_", item.id, call_id=item.call_id, output=output)


def _text(parts: list[Json]) -> str:
    return "".join(part["text"] for part in parts)


def chat_messages(instructions: str | None, items: list[Json]) -> list[Json]:
    """The conversation as chat messages: the instructions as the system message, then the items
    in order. Function calls join the assistant turn before them (text and calls are one turn);
    their outputs become tool messages."""
    messages: list[Json] = [{"role": "system", "content": instructions}] if instructions else []
    for item in items:
        if item["type"] == "message":
            messages.append({"role": item["role"], "content": _text(item["content"])})
        elif item["type"] == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:  # function_call_output
            output = item["output"]
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": item["call_id"],
                    "content": output if isinstance(output, str) else _text(output),
                }
            )
    return messages


def _response_format(body: ResponseCreateRequest) -> Json | None:
    text_format = body.text.format if body.text else None
    if text_format is None or text_format.type == "text":
        return None
    if text_format.type == "json_object":
        return {"type": "json_object"}
    schema = {
        "name": text_format.name,
        "description": text_format.description,
        "schema": text_format.json_schema,
        "strict": text_format.strict,
    }
    return {"type": "json_schema", "json_schema": {key: value for key, value in schema.items() if value is not None}}


def _tool_choice(choice: str | NamedFunction | None) -> Any:
    if isinstance(choice, NamedFunction):
        return {"type": "function", "function": {"name": choice.name}}
    return choice


def chat_body(body: ResponseCreateRequest, messages: list[Json]) -> schemas.ChatCompletionRequest:
    """The chat request with the response's messages, sampling, output limit, format and tools."""
    data = body.model_dump(include=_SHARED_FIELDS, exclude_none=True, by_alias=True)
    tools = [
        {"type": "function", "function": tool.model_dump(exclude={"type"}, exclude_none=True)}
        for tool in body.tools or ()
    ]
    extras = {
        "messages": messages,
        "max_completion_tokens": body.max_output_tokens,
        "response_format": _response_format(body),
        "tools": tools or None,
        "tool_choice": _tool_choice(body.tool_choice),
        "parallel_tool_calls": body.parallel_tool_calls,
    }
    data.update((key, value) for key, value in extras.items() if value is not None)
    try:
        return schemas.ChatCompletionRequest.model_validate(data)
    except ValidationError as error:  # what only the whole request can tell (tool_choice vs tools)
        raise from_validation_error(error) from None
