"""Prompt fields of the protobuf API (text, token ids, chat) to token ids, validated."""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from service.errors import InvalidRequest
from service.text.chat import ADD_GENERATION_PROMPT, render_chat
from service.text.encoding import encode_text
from tokenwire.v1 import generation_pb2

# Each role and the role chat templates know it by: OpenAI's "developer" is its newer name for
# "system".
CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


def chat_messages(chat: generation_pb2.ChatPrompt) -> list[dict[str, Any]]:
    """ChatPrompt messages as the dicts chat templates expect."""
    if not chat.messages:
        raise InvalidRequest("`messages` must contain at least one message.", field="chat.messages")
    messages = []
    for i, message in enumerate(chat.messages):
        if message.role not in CHAT_ROLES:
            raise InvalidRequest(
                f"messages[{i}].role must be one of {', '.join(CHAT_ROLES)}, not {message.role!r}.",
                field=f"chat.messages[{i}].role",
            )
        entry: dict[str, Any] = {"role": CHAT_ROLES[message.role], "content": message.content}
        if message.name:
            entry["name"] = message.name
        if message.tool_call_id:
            entry["tool_call_id"] = message.tool_call_id
        if message.tool_calls:
            entry["tool_calls"] = [_tool_call(call, i) for call in message.tool_calls]
        messages.append(entry)
    return messages


def _tool_call(call: generation_pb2.ToolCall, message_index: int) -> dict[str, Any]:
    try:
        arguments = json.loads(call.function.arguments or "{}")
    except ValueError:
        raise InvalidRequest(
            f"messages[{message_index}].tool_calls: arguments of {call.function.name!r} are not valid JSON.",
            field=f"chat.messages[{message_index}].tool_calls",
        ) from None
    return {"id": call.id, "type": call.type or "function",
            "function": {"name": call.function.name, "arguments": arguments}}


def add_generation_prompt(chat: generation_pb2.ChatPrompt) -> bool:
    """Whether the rendered chat ends where the assistant's answer begins (unset: the default)."""
    return chat.add_generation_prompt if chat.HasField("add_generation_prompt") else ADD_GENERATION_PROMPT


def check_token_ids(ids: list[int], vocab_size: int, field: str) -> list[int]:
    if not ids:
        raise InvalidRequest("The prompt must contain at least one token.", field=field)
    bad = next((t for t in ids if t >= vocab_size), None)
    if bad is not None:
        raise InvalidRequest(f"Token id {bad} is outside the vocabulary (size {vocab_size}).", field=field)
    return list(ids)


def generation_prompt_ids(
    request: generation_pb2.GenerateRequest,
    tokenizer: Any,
    tools: list[dict[str, Any]] | None = None,
    check_text: Callable[[str], None] = lambda text: None,
) -> list[int]:
    """The prompt's token ids; `tools` (OpenAI's shape) go into a chat prompt's template.

    `check_text` sees the text about to be tokenized (the text prompt, or the chat as its template
    renders it) and may refuse it: tokenizing megabytes takes seconds.
    """
    kind = request.WhichOneof("prompt")
    if kind == "text":
        if not request.text:
            raise InvalidRequest("The prompt must not be empty.", field="prompt")
        check_text(request.text)
        return encode_text(tokenizer, request.text)
    if kind == "token_ids":
        return check_token_ids(list(request.token_ids.ids), len(tokenizer), "prompt")
    if kind == "chat":
        text = render_chat(tokenizer, chat_messages(request.chat), add_generation_prompt(request.chat), tools)
        check_text(text)
        # The template already wrote every special token (BOS included), so none are added again.
        return encode_text(tokenizer, text, add_special_tokens=False)
    raise InvalidRequest("A prompt is required: text, token_ids or chat.", field="prompt")
