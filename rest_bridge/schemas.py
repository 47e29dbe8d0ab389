"""Pydantic models of the OpenAI (and vLLM tokenizer) request bodies.

Unknown fields are accepted and ignored; known OpenAI features that are not implemented yet are
rejected with a 400 naming the parameter, never silently dropped. Fields default to None so that
"not sent" stays distinguishable from any value (unset means the model's default). Known fields
take JSON types strictly, as OpenAI's validation does: no booleans or numeric strings for numbers,
no 0/1 or "true" for booleans.
"""
from __future__ import annotations

import json
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from rest_bridge.errors import CUSTOM_ERROR_TYPE
from tokenwire.limits import MAX_INPUTS

_UINT32_MAX = 2**32 - 1


def _whole_number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# JSON has one number type: like OpenAI's (JSON Schema) validation, 5.0 is an integer there.
Int = Annotated[int, BeforeValidator(_whole_number)]
UInt32 = Annotated[Int, Field(ge=0, le=_UINT32_MAX)]
PositiveUInt32 = Annotated[Int, Field(ge=1, le=_UINT32_MAX)]
Int32 = Annotated[Int, Field(ge=-(2**31), le=2**31 - 1)]
# JSON object keys are strings: logit_bias's token ids are parsed from them.
TokenIdKey = Annotated[int, Strict(False), Field(ge=0, le=_UINT32_MAX)]
LogitBias = Annotated[float, Field(ge=-100, le=100)]
# OpenAI's metadata of a response or a batch: up to 16 pairs of short strings.
Metadata = Annotated[
    dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]], Field(max_length=16)
]
# A prompt after normalization: text or token ids.
Prompt = str | list[int]


def request_error(message: str, param: str | None = None) -> PydanticCustomError:
    """A validation error whose message is shown as is (with `param` overriding the location)."""
    return PydanticCustomError(CUSTOM_ERROR_TYPE, message, {"param": param} if param else None)


def unsupported(param: str, what: str | None = None) -> PydanticCustomError:
    return request_error(f"{what or repr(param)} is not supported yet.", param)


def missing(model: BaseModel, field: str) -> ValidationError:
    """A "missing" error for a field that `model` needs; raised in its validator, pydantic puts the
    model's own location in front (`messages[2].tool_call_id`)."""
    details = InitErrorDetails(type="missing", loc=(field,), input=model)
    return ValidationError.from_exception_data(type(model).__name__, [details])


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _UINT32_MAX


def _prompt_list(value: Any, param: str) -> list[Prompt]:
    """Normalizes OpenAI's four prompt forms to a list of prompts (text or token ids)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(item, str) for item in value):
            return value
        if all(_is_token_id(item) for item in value):
            return [value]
        if all(isinstance(item, list) and item and all(_is_token_id(t) for t in item) for item in value):
            return value
    raise request_error(
        f"'{param}' must be a string, a list of strings, a list of token ids or a list of token-id "
        "lists, and not empty.",
        param,
    )


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class FunctionCall(_Body):
    name: str
    arguments: str

    @field_validator("arguments", mode="before")
    @classmethod
    def _arguments_as_text(cls, value: Any) -> Any:
        # OpenAI sends a JSON text; some clients send the object itself.
        return json.dumps(value) if isinstance(value, dict | list) else value


class ToolCall(_Body):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class TextPart(_Body):
    type: Literal["text"]
    text: str


_TEXT_PARTS = TypeAdapter(list[TextPart])


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _join_text_parts(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        for part in value:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind != "text":
                raise request_error(
                    f"Content parts of type {kind!r} are not supported yet; only 'text' parts are."
                )
        # Errors inside a part name it: messages[0].content[1].text.
        return "\n".join(part.text for part in _TEXT_PARTS.validate_python(value))

    @model_validator(mode="after")
    def _content_required(self) -> ChatMessage:
        # Only an assistant turn that calls tools may leave its content out (OpenAI's rule).
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise request_error(
                f"A {self.role} message in 'messages' must have a 'content' "
                "(only an assistant message with tool_calls may leave it out)."
            )
        if self.role == "tool" and self.tool_call_id is None:
            raise missing(self, "tool_call_id")
        return self


class StreamOptions(_Body):
    include_usage: bool | None = None


ToolName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]


class FunctionDefinition(_Body):
    name: ToolName
    description: str | None = None
    # The JSON schema of the arguments; left out: a function without arguments.
    parameters: dict[str, Any] | None = None
    # Calls are always decoded under the schema, so strict or not, arguments validate.
    strict: bool | None = None


class Tool(_Body):
    type: Literal["function"]
    function: FunctionDefinition


# Like OpenAI, an empty list is refused rather than read as "no tools".
Tools = Annotated[list[Tool], Field(min_length=1)]


class FunctionName(_Body):
    name: str


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: FunctionName


class JsonSchemaFormat(_Body):
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")] | None = None
    description: str | None = None
    # Left out: any JSON value. ("schema" would shadow a BaseModel attribute, hence the alias.)
    json_schema: dict[str, Any] | bool | None = Field(default=None, alias="schema")
    strict: bool | None = None

    @field_validator("json_schema", mode="before")
    @classmethod
    def _schema_is_object(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, dict | bool):
            raise request_error("'response_format.json_schema.schema' must be a JSON schema object.", "response_format")
        return value


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise request_error(
                "response_format of type 'json_schema' needs a 'json_schema' object.", "response_format.json_schema"
            )
        return self


class StructuredOutputs(_Body):
    """vLLM's `structured_outputs` object (its newer spelling of the guided_* extras)."""

    # ("json" would shadow a BaseModel method, hence the alias.)
    json_value: dict[str, Any] | str | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: Annotated[list[str], Field(min_length=1)] | None = None
    grammar: str | None = None
    json_object: bool | None = None


class OutputConstraint(NamedTuple):
    """What constrains a request's output: the parameter it came in, the StructuredOutput field
    it becomes (json_object, json_schema, regex, choice or grammar) and its value."""

    param: str
    kind: str
    value: Any


# Where each extra goes in StructuredOutput.
_GUIDED_KINDS = {"guided_json": "json_schema", "guided_regex": "regex", "guided_choice": "choice", "guided_grammar": "grammar"}
_STRUCTURED_OUTPUTS_KINDS = {
    "json_value": ("json", "json_schema"),
    "regex": ("regex", "regex"),
    "choice": ("choice", "choice"),
    "grammar": ("grammar", "grammar"),
    "json_object": ("json_object", "json_object"),
}


class SamplingRequest(_Body):
    """The parameters chat, completions and responses share: model, sampling, stopping, priority."""

    model: str | None = None
    stream: bool | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[Int, Field(ge=0, le=999)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    repetition_penalty: Annotated[float, Field(ge=0.01, le=5)] | None = None
    seed: Annotated[Int, Field(ge=-(2**63), le=2**64 - 1)] | None = None
    logit_bias: dict[TokenIdKey, LogitBias] | None = None
    stop: list[str] | None = None
    user: str | None = None
    # Extras of vLLM and other servers.
    stop_token_ids: list[UInt32] | None = None
    ignore_eos: bool | None = None
    min_tokens: UInt32 | None = None
    include_stop_str_in_output: bool | None = None
    skip_special_tokens: bool | None = None
    # vLLM's extra: lower values are served first (default 0).
    priority: Int32 | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, value: Any) -> Any:
        if value is None or isinstance(value, list):
            return value
        if isinstance(value, str):
            return [value]
        raise request_error("'stop' must be a string or a list of strings.", "stop")


class GenerationBody(SamplingRequest):
    """The parameters chat and completions share."""

    max_tokens: PositiveUInt32 | None = None
    max_completion_tokens: PositiveUInt32 | None = None
    stream_options: StreamOptions | None = None
    n: Annotated[Int, Field(ge=1, le=128)] | None = None
    response_format: ResponseFormat | None = None
    # vLLM's structured-output extras: a JSON schema (object or JSON text), a regex, a choice of
    # strings, a grammar (llguidance's Lark syntax). One of them or response_format, not two.
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: Annotated[list[str], Field(min_length=1)] | None = None
    guided_grammar: str | None = None
    structured_outputs: StructuredOutputs | None = None

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> GenerationBody:
        if self.stream_options is not None and not self.stream:
            raise request_error(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options"
            )
        return self

    @model_validator(mode="after")
    def _one_output_constraint(self) -> GenerationBody:
        given = [constraint.param for constraint in self._output_constraints()]
        if len(given) > 1:
            raise request_error(
                f"Send only one of {' and '.join(given)}: each constrains the whole output.", given[1]
            )
        return self

    def _output_constraints(self) -> list[OutputConstraint]:
        found = []
        response_format = self.response_format
        if response_format is not None and response_format.type == "json_object":
            found.append(OutputConstraint("response_format", "json_object", True))
        elif response_format is not None and response_format.type == "json_schema":
            schema = response_format.json_schema.json_schema if response_format.json_schema else None
            found.append(OutputConstraint("response_format", "json_schema", {} if schema is None or schema is True else schema))
        for param, kind in _GUIDED_KINDS.items():
            if (value := getattr(self, param)) is not None:
                found.append(OutputConstraint(param, kind, value))
        for field, (name, kind) in _STRUCTURED_OUTPUTS_KINDS.items():
            value = getattr(self.structured_outputs, field, None)
            if value is not None and value is not False:
                found.append(OutputConstraint(f"structured_outputs.{name}", kind, value))
        return found

    @property
    def output_constraint(self) -> OutputConstraint | None:
        """What constrains the output (validated to be one thing at most), if anything."""
        return next(iter(self._output_constraints()), None)

    @property
    def choices_per_prompt(self) -> int:
        return self.n or 1

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def max_new_tokens(self) -> int | None:
        """max_completion_tokens is OpenAI's newer name of max_tokens; it wins when both are sent."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class ChatCompletionRequest(GenerationBody):
    messages: list[ChatMessage] = Field(min_length=1)
    add_generation_prompt: bool | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[Int, Field(ge=0, le=20)] | None = None
    tools: Tools | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # Known OpenAI features, rejected until implemented.
    functions: list[dict[str, Any]] | None = None
    function_call: Any = None

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise request_error("'top_logprobs' requires 'logprobs' to be true.", "top_logprobs")
        return self

    @property
    def logprob_alternatives(self) -> int | None:
        """Alternatives per token when logprobs are asked for, else None."""
        return (self.top_logprobs or 0) if self.logprobs else None

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _known_tool_choice(cls, value: Any) -> Any:
        if value in (None, "none", "auto", "required") or isinstance(value, NamedToolChoice):
            return value
        if isinstance(value, dict):
            try:
                return NamedToolChoice.model_validate(value)
            except ValidationError:
                pass
        raise request_error(
            "'tool_choice' must be 'none', 'auto', 'required' or {\"type\": \"function\", \"function\": {\"name\": …}}.",
            "tool_choice",
        )

    @model_validator(mode="after")
    def _tool_choice_matches_tools(self) -> ChatCompletionRequest:
        names = [tool.function.name for tool in self.tools or ()]
        if len(set(names)) != len(names):
            raise request_error("Every tool in 'tools' needs a different function name.", "tools")
        if isinstance(self.tool_choice, NamedToolChoice):
            if self.tool_choice.function.name not in names:
                raise request_error(
                    f"tool_choice names the function {self.tool_choice.function.name!r}, which is not in 'tools'.",
                    "tool_choice",
                )
        elif self.tool_choice == "required" and not names:
            raise request_error("tool_choice 'required' needs 'tools'.", "tool_choice")
        return self

    @model_validator(mode="after")
    def _reject_unsupported(self) -> ChatCompletionRequest:
        if self.functions or self.function_call not in (None, "none"):
            raise unsupported("functions" if self.functions else "function_call", "Function calling")
        return self


class CompletionRequest(GenerationBody):
    prompt: list[Prompt]
    # The sampled token's logprob plus this many alternatives (the legacy completions shape).
    logprobs: Annotated[Int, Field(ge=0, le=5)] | None = None
    # The prompt comes first in each choice's text (and its tokens first in logprobs).
    echo: bool | None = None
    # Known OpenAI features, rejected until implemented.
    suffix: str | None = None
    best_of: Annotated[Int, Field(ge=1)] | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _normalize_prompt(cls, value: Any) -> list[Prompt]:
        prompts = _prompt_list(value, "prompt")
        if len(prompts) > MAX_INPUTS:
            raise request_error(f"'prompt' may hold at most {MAX_INPUTS} prompts, got {len(prompts)}.", "prompt")
        return prompts

    @model_validator(mode="after")
    def _reject_unsupported(self) -> CompletionRequest:
        if self.suffix:
            raise unsupported("suffix")
        if self.best_of is not None and self.best_of != self.choices_per_prompt:
            raise unsupported("best_of", "best_of other than n")
        return self


class EmbeddingRequest(_Body):
    model: str | None = None
    input: list[Prompt]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: PositiveUInt32 | None = None
    user: str | None = None
    # vLLM's extra, as on generation requests.
    priority: Int32 | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _normalize_input(cls, value: Any) -> list[Prompt]:
        return _prompt_list(value, "input")


class TokenizeRequest(_Body):
    """vLLM's /tokenize body: a text prompt or chat messages."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool | None = None
    return_token_strs: bool = False
    # With messages: rendered as chat completions render them, so the counts agree.
    tools: Tools | None = None

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise request_error("Send exactly one of 'prompt' and 'messages'.", "prompt")
        if self.tools and self.messages is None:
            raise request_error("'tools' needs 'messages'.", "tools")
        return self


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[UInt32]
    # Unset: special tokens are kept, as vLLM's /detokenize keeps them.
    skip_special_tokens: bool | None = None
