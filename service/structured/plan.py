"""What a GenerateRequest's structured_output, tools and tool_choice ask for: validated, with the
decoding constraint compiled and the tools the chat template shows.

| tool choice            | constraint                                          | finish with calls |
|------------------------|-----------------------------------------------------|-------------------|
| none (or no tools)     | structured_output, if any                           | -                 |
| auto                   | free text; a call is schema-checked once it starts  | TOOL_CALLS        |
|                        | (with a JSON structured_output: calls or that JSON) |                   |
| required               | one or more calls (one without parallel_tool_calls) | TOOL_CALLS        |
| function_name          | one call of that function                           | STOP (as OpenAI)  |
"""
from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from service.errors import InvalidRequest, WrongModelKind
from service.models.registry import GenerationModel
from service.structured.grammar import ConstraintCompiler, ConstraintFactory, GrammarError, ToolChoice, ToolSchema
from service.structured.reader import ToolCallReader
from tokenwire.v1 import generation_pb2

TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
MAX_TOOLS = 128
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
# The structured_output kinds a tool_choice auto turn can answer with instead of calls.
_JSON_KINDS = ("json_object", "json_schema")


@dataclass(frozen=True)
class Tool:
    schema: ToolSchema
    # As chat templates expect it: {"type": "function", "function": {name, description, parameters}}.
    prompt: dict[str, Any]


@dataclass(frozen=True)
class OutputPlan:
    """What structured output and tools change in a request."""

    # Builds each sequence's grammar state (None: unconstrained).
    constraint: ConstraintFactory | None = None
    # The tools the chat template shows the model (None: none).
    prompt_tools: list[dict[str, Any]] | None = None
    tool_choice: ToolChoice = ToolChoice.NONE

    def tool_call_reader(self) -> ToolCallReader | None:
        if self.tool_choice is ToolChoice.NONE:
            return None
        return ToolCallReader(
            finish_with_tool_calls=self.tool_choice in (ToolChoice.AUTO, ToolChoice.REQUIRED),
            calls_only=self.tool_choice in (ToolChoice.REQUIRED, ToolChoice.NAMED),
        )


def parse_tools(proto_tools: Sequence[generation_pb2.Tool]) -> list[Tool]:
    """Validated tools (the `tools` field of a Generate or Tokenize request)."""
    if len(proto_tools) > MAX_TOOLS:
        raise InvalidRequest(f"At most {MAX_TOOLS} tools are supported.", field="tools")
    tools: list[Tool] = []
    names: set[str] = set()
    for i, tool in enumerate(proto_tools):
        if tool.type not in ("", "function"):
            raise InvalidRequest(f"tools[{i}].type must be 'function', not {tool.type!r}.", field=f"tools[{i}].type")
        name = tool.function.name
        if not TOOL_NAME.fullmatch(name):
            raise InvalidRequest(
                f"tools[{i}].function.name must be 1 to 64 characters of a-z, A-Z, 0-9, _ and -; got {name!r}.",
                field=f"tools[{i}].function.name",
            )
        if name in names:
            raise InvalidRequest(f"Two tools are named {name!r}.", field=f"tools[{i}].function.name")
        names.add(name)
        parameters: Any = NO_PARAMETERS
        if tool.function.parameters:
            try:
                parameters = json.loads(tool.function.parameters)
            except ValueError:
                parameters = None
            if not isinstance(parameters, dict):
                raise InvalidRequest(
                    f"tools[{i}].function.parameters must be a JSON schema object.",
                    field=f"tools[{i}].function.parameters",
                )
        function: dict[str, Any] = {"name": name}
        if tool.function.description:
            function["description"] = tool.function.description
        function["parameters"] = parameters
        tools.append(Tool(ToolSchema(name, parameters), {"type": "function", "function": function}))
    return tools


def _tool_choice(request: generation_pb2.GenerateRequest, tools: list[Tool]) -> tuple[ToolChoice, list[Tool]]:
    """(the choice, the tools a call may use)."""
    choice = request.tool_choice
    kind = choice.WhichOneof("choice")
    if kind == "function_name":
        named = [tool for tool in tools if tool.schema.name == choice.function_name]
        if not named:
            raise InvalidRequest(
                f"tool_choice names the function {choice.function_name!r}, which is not in tools.",
                field="tool_choice.function_name",
            )
        return ToolChoice.NAMED, named
    mode = choice.mode if kind == "mode" else generation_pb2.TOOL_CHOICE_MODE_UNSPECIFIED
    if mode == generation_pb2.TOOL_CHOICE_MODE_NONE:
        return ToolChoice.NONE, []
    if mode == generation_pb2.TOOL_CHOICE_MODE_REQUIRED:
        if not tools:
            raise InvalidRequest("tool_choice 'required' needs tools.", field="tool_choice")
        return ToolChoice.REQUIRED, tools
    if mode not in (generation_pb2.TOOL_CHOICE_MODE_UNSPECIFIED, generation_pb2.TOOL_CHOICE_MODE_AUTO):
        raise InvalidRequest(f"Unknown tool_choice mode {mode}.", field="tool_choice.mode")
    return (ToolChoice.AUTO, tools) if tools else (ToolChoice.NONE, [])


def _structured(request: generation_pb2.GenerateRequest) -> tuple[str, Any] | None:
    """(kind, value) of the structured output asked for, or None."""
    output = request.structured_output
    kind = output.WhichOneof("format")
    if kind is None or (kind == "json_object" and not output.json_object):
        return None
    if kind == "json_schema":
        try:
            return kind, json.loads(output.json_schema)
        except ValueError as error:
            raise InvalidRequest(f"json_schema is not valid JSON: {error}.", field="structured_output.json_schema") from None
    if kind == "choice":
        return kind, list(output.choice.values)
    return kind, getattr(output, kind)


def _response_schema(compiler: ConstraintCompiler, structured: tuple[str, Any], field_name: str) -> dict[str, Any]:
    """The JSON schema a tool_choice auto turn may answer with instead of calls."""
    kind, value = structured
    if kind not in _JSON_KINDS:
        raise InvalidRequest(
            f"structured_output {kind} cannot be combined with tool_choice auto (json_object and json_schema can).",
            field=field_name,
        )
    schema = {"type": "object"} if kind == "json_object" else value
    if schema is True:
        schema = {}
    if not isinstance(schema, dict):
        raise GrammarError("A JSON schema must be a JSON object (or true).")
    compiler.json_schema(schema)  # its own errors first
    return schema


def _compile(
    compiler: ConstraintCompiler,
    structured: tuple[str, Any] | None,
    choice: ToolChoice,
    tools: list[Tool],
    parallel: bool,
) -> ConstraintFactory | None:
    """The constraint (runs llguidance: call it off the event loop). GrammarError → InvalidRequest."""
    for i, tool in enumerate(tools):
        try:
            compiler.json_schema(tool.schema.parameters)
        except GrammarError as error:
            raise InvalidRequest(
                f"tools[{i}].function.parameters is not a usable JSON schema: {error}",
                field=f"tools[{i}].function.parameters",
            ) from None
    field_name = f"structured_output.{structured[0]}" if structured else "structured_output"
    try:
        schemas = [tool.schema for tool in tools]
        if choice in (ToolChoice.REQUIRED, ToolChoice.NAMED):
            return compiler.tool_calls(schemas, choice, parallel=parallel and choice is ToolChoice.REQUIRED)
        if choice is ToolChoice.AUTO:
            response_schema = None if structured is None else _response_schema(compiler, structured, field_name)
            return compiler.tool_calls(schemas, choice, parallel=parallel, response_schema=response_schema)
        if structured is None:
            return None
        kind, value = structured
        builders: dict[str, Callable[[Any], ConstraintFactory]] = {
            "json_object": lambda _: compiler.json_object(),
            "json_schema": compiler.json_schema,
            "regex": compiler.regex,
            "choice": compiler.choice,
            "grammar": compiler.grammar,
        }
        return builders[kind](value)
    except GrammarError as error:
        raise InvalidRequest(f"Invalid {field_name.replace('structured_output.', '')}: {error}", field=field_name) from None


def _compiler(model: GenerationModel) -> ConstraintCompiler:
    if model.constraints is None:
        raise WrongModelKind(f"Model {model.card.model_id!r} does not support constrained decoding.")
    return model.constraints


async def output_plan(request: generation_pb2.GenerateRequest, model: GenerationModel) -> OutputPlan:
    """Validates structured_output, tools and tool_choice and compiles the constraint (in a
    thread: a new grammar takes milliseconds, a model's first one about a second)."""
    tools = parse_tools(request.tools)
    choice, callable_tools = _tool_choice(request, tools)
    if choice is not ToolChoice.NONE and request.WhichOneof("prompt") != "chat":
        raise InvalidRequest("Tools need a chat prompt.", field="tools")
    structured = _structured(request)
    if choice is ToolChoice.NONE and structured is None:
        return OutputPlan()
    parallel = request.parallel_tool_calls if request.HasField("parallel_tool_calls") else True
    constraint = await asyncio.to_thread(_compile, _compiler(model), structured, choice, callable_tools, parallel)
    return OutputPlan(
        constraint=constraint,
        prompt_tools=[tool.prompt for tool in tools] if choice is not ToolChoice.NONE else None,
        tool_choice=choice,
    )
