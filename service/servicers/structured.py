"""Structured output and tools of a GenerateRequest: validation, the decoding constraint, the
tools shown to the chat template, and the tool calls parsed from the output.

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
from dataclasses import dataclass, field, replace
from typing import Any

from service.engine.constraints import ConstraintCompiler, ConstraintFactory, GrammarError, ToolSchema
from service.engine.types import FinishReason, SequenceUpdate
from service.errors import InvalidRequest, WrongModelKind
from service.models.registry import GenerationModel
from service.models.tool_calls import ToolCallParser
from tokenwire.v1 import generation_pb2

TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
MAX_TOOLS = 128
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}

def compiler_for(model: GenerationModel) -> ConstraintCompiler:
    """The model's grammar compiler."""
    if model.constraints is None:
        raise WrongModelKind(f"Model {model.card.model_id!r} does not support constrained decoding.")
    return model.constraints


@dataclass(frozen=True)
class _Tool:
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
    # none | auto | required | named
    tool_choice: str = "none"

    def tool_call_reader(self) -> ToolCallReader | None:
        if self.tool_choice == "none":
            return None
        return ToolCallReader(
            finish_with_tool_calls=self.tool_choice in ("auto", "required"),
            calls_only=self.tool_choice in ("required", "named"),
        )


def parse_tools(proto_tools: Sequence[generation_pb2.Tool]) -> list[_Tool]:
    """Validated tools (the `tools` field of a Generate or Tokenize request)."""
    if len(proto_tools) > MAX_TOOLS:
        raise InvalidRequest(f"At most {MAX_TOOLS} tools are supported.", field="tools")
    tools: list[_Tool] = []
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
        tools.append(_Tool(ToolSchema(name, parameters), {"type": "function", "function": function}))
    return tools


def _tool_choice(request: generation_pb2.GenerateRequest, tools: list[_Tool]) -> tuple[str, list[_Tool]]:
    """(mode, the tools a call may use)."""
    choice = request.tool_choice
    kind = choice.WhichOneof("choice")
    if kind == "function_name":
        named = [tool for tool in tools if tool.schema.name == choice.function_name]
        if not named:
            raise InvalidRequest(
                f"tool_choice names the function {choice.function_name!r}, which is not in tools.",
                field="tool_choice.function_name",
            )
        return "named", named
    mode = choice.mode if kind == "mode" else generation_pb2.TOOL_CHOICE_MODE_UNSPECIFIED
    if mode == generation_pb2.TOOL_CHOICE_MODE_NONE:
        return "none", []
    if mode == generation_pb2.TOOL_CHOICE_MODE_REQUIRED:
        if not tools:
            raise InvalidRequest("tool_choice 'required' needs tools.", field="tool_choice")
        return "required", tools
    if mode not in (generation_pb2.TOOL_CHOICE_MODE_UNSPECIFIED, generation_pb2.TOOL_CHOICE_MODE_AUTO):
        raise InvalidRequest(f"Unknown tool_choice mode {mode}.", field="tool_choice.mode")
    return ("auto", tools) if tools else ("none", [])


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


def _compile(
    compiler: ConstraintCompiler, structured: tuple[str, Any] | None, mode: str, tools: list[_Tool], parallel: bool
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
        if mode in ("required", "named"):
            return compiler.tool_calls(schemas, mode, parallel=parallel and mode == "required")  # type: ignore[arg-type]
        if mode == "auto":
            response_schema = None
            if structured is not None:
                kind, value = structured
                if kind not in ("json_object", "json_schema"):
                    raise InvalidRequest(
                        f"structured_output {kind} cannot be combined with tool_choice auto "
                        "(json_object and json_schema can).",
                        field=field_name,
                    )
                response_schema = {"type": "object"} if kind == "json_object" else value
                if response_schema is True:
                    response_schema = {}
                if not isinstance(response_schema, dict):
                    raise GrammarError("A JSON schema must be a JSON object (or true).")
                compiler.json_schema(response_schema)  # its own errors first
            return compiler.tool_calls(schemas, "auto", parallel=parallel, response_schema=response_schema)
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


async def output_plan(request: generation_pb2.GenerateRequest, model: GenerationModel) -> OutputPlan:
    """Validates structured_output, tools and tool_choice and compiles the constraint (in a
    thread: a new grammar takes milliseconds, a model's first one about a second)."""
    tools = parse_tools(request.tools)
    mode, callable_tools = _tool_choice(request, tools)
    if mode != "none" and request.WhichOneof("prompt") != "chat":
        raise InvalidRequest("Tools need a chat prompt.", field="tools")
    structured = _structured(request)
    if mode == "none" and structured is None:
        return OutputPlan()
    parallel = request.parallel_tool_calls if request.HasField("parallel_tool_calls") else True
    compiler = compiler_for(model)
    constraint = await asyncio.to_thread(_compile, compiler, structured, mode, callable_tools, parallel)
    return OutputPlan(
        constraint=constraint,
        prompt_tools=[tool.prompt for tool in tools] if mode != "none" else None,
        tool_choice=mode,
    )


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
