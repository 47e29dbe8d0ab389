"""The body of POST /v1/responses (OpenAI's Responses API), validated as the other bodies are:
unknown fields ignored, known features that are not implemented refused with a 400 naming them.

The sampling fields are chat's (SamplingRequest); what differs is the input (items instead of
messages), the output limit (max_output_tokens), the format (text.format) and the flat tools.
"""
from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, PlainValidator, field_validator, model_validator

from rest_bridge.schemas import (
    FunctionDefinition,
    Int,
    Metadata,
    PositiveUInt32,
    SamplingRequest,
    _Body,
    request_error,
    unsupported,
)

# Content parts that carry text: what users send, and what the model wrote (earlier turns).
TEXT_PARTS = ("input_text", "output_text")


class TextPart(_Body):
    type: Literal["input_text", "output_text"]
    text: str


def _parts(value: Any) -> Any:
    """A message's content as a list of text parts; other parts (images, files) are refused."""
    if isinstance(value, str):
        return [{"type": "input_text", "text": value}]
    for part in value if isinstance(value, list) else ():
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in TEXT_PARTS:
            raise request_error(f"Content parts of type {kind!r} are not supported yet; only text parts are.")
    return value


class MessageItem(_Body):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: list[TextPart]
    id: str | None = None

    _text_parts = field_validator("content", mode="before")(_parts)


class FunctionCallItem(_Body):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None

    @field_validator("arguments", mode="before")
    @classmethod
    def _arguments_as_text(cls, value: Any) -> Any:
        return json.dumps(value) if isinstance(value, dict) else value


class FunctionCallOutputItem(_Body):
    type: Literal["function_call_output"]
    call_id: str
    # Text, or text parts (joined).
    output: str | list[TextPart]
    id: str | None = None

    @field_validator("output", mode="before")
    @classmethod
    def _text_output(cls, value: Any) -> Any:
        return value if isinstance(value, str) else _parts(value)


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem
_ITEM_MODELS: dict[str, type[InputItem]] = {
    "message": MessageItem,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
}


def parse_item(value: Any) -> InputItem:
    """One input item (a dict), by its type; a missing type is a message (OpenAI's easy form).
    Errors are located in the item (pydantic puts its place in front: input[2].call_id)."""
    if isinstance(value, InputItem):
        return value
    if not isinstance(value, dict):
        raise request_error("Each input item must be an object.")
    kind = value.get("type", "message")
    if kind not in _ITEM_MODELS:
        raise request_error(f"Input items of type {kind!r} are not supported yet.")
    return _ITEM_MODELS[kind].model_validate(value)


Item = Annotated[InputItem, PlainValidator(parse_item)]


class FunctionTool(FunctionDefinition):
    """A function tool: chat's function definition, flat."""

    type: Literal["function"]


class NamedFunction(_Body):
    type: Literal["function"]
    name: str


class TextFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")] | None = None
    description: str | None = None
    # ("schema" would shadow a BaseModel attribute, hence the alias.)
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> TextFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise request_error("text.format of type 'json_schema' needs a 'schema'.", "text.format.schema")
        return self


class TextConfig(_Body):
    format: TextFormat | None = None


class ResponseCreateRequest(SamplingRequest):
    input: list[Item]
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    max_output_tokens: PositiveUInt32 | None = None
    text: TextConfig | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool | None = None
    metadata: Metadata | None = None
    # Known OpenAI features, refused until implemented.
    background: bool | None = None
    conversation: Any = None
    top_logprobs: Annotated[Int, Field(ge=0)] | None = None
    truncation: Literal["auto", "disabled"] | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _items(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [{"type": "message", "role": "user", "content": value}]
        if not isinstance(value, list):
            raise request_error("'input' must be a string or a list of input items.", "input")
        return value

    @field_validator("tools", mode="before")
    @classmethod
    def _function_tools(cls, value: Any) -> Any:
        for index, tool in enumerate(value if isinstance(value, list) else ()):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind != "function":
                raise request_error(
                    f"Tools of type {kind!r} are not supported yet; only 'function' tools are.", f"tools[{index}].type"
                )
        return value

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _known_tool_choice(cls, value: Any) -> Any:
        if value in (None, "none", "auto", "required"):
            return value
        if isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("name"), str):
            return value
        raise request_error(
            "'tool_choice' must be 'none', 'auto', 'required' or {\"type\": \"function\", \"name\": …}.",
            "tool_choice",
        )

    @model_validator(mode="after")
    def _reject_unsupported(self) -> ResponseCreateRequest:
        if self.background:
            raise unsupported("background")
        if self.conversation is not None:
            raise unsupported("conversation", "'conversation' (use previous_response_id)")
        if self.top_logprobs:
            raise unsupported("top_logprobs")
        if self.truncation == "auto":
            raise unsupported("truncation", "truncation 'auto'")
        return self

    @property
    def stored(self) -> bool:
        """OpenAI's default: responses are stored."""
        return self.store is not False
