"""Pure mappings: OpenAI request bodies → protobuf requests, protobuf responses → OpenAI JSON.

No I/O here, so every mapping is unit-tested without a server.
"""
from __future__ import annotations

import base64
import codecs
import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from rest_bridge import schemas
from tokenwire.v1 import common_pb2, embedding_pb2, generation_pb2, models_pb2, tokenization_pb2

# Proto field path (as in google.rpc.BadRequest field violations) → OpenAI parameter.
_GENERATION_PARAMS = {
    "model": "model",
    "sampling.n": "n",
    "sampling.temperature": "temperature",
    "sampling.top_p": "top_p",
    "sampling.top_k": "top_k",
    "sampling.min_p": "min_p",
    "sampling.seed": "seed",
    "penalties.presence_penalty": "presence_penalty",
    "penalties.frequency_penalty": "frequency_penalty",
    "penalties.repetition_penalty": "repetition_penalty",
    "penalties.logit_bias": "logit_bias",
    "stopping.max_new_tokens": "max_tokens",
    "stopping.min_new_tokens": "min_tokens",
    "stopping.stop": "stop",
    "stopping.stop_token_ids": "stop_token_ids",
    "stopping.include_stop_string": "include_stop_str_in_output",
    "stopping.ignore_eos": "ignore_eos",
    "response.skip_special_tokens": "skip_special_tokens",
    "priority": "priority",
}
CHAT_PARAMS = {
    **_GENERATION_PARAMS,
    "logprobs": "logprobs",
    "logprobs.top_logprobs": "top_logprobs",
    **dict.fromkeys(("prompt", "chat", "chat.messages"), "messages"),
    "tools": "tools",
    "tool_choice": "tool_choice",
    "tool_choice.function_name": "tool_choice.function.name",
    "parallel_tool_calls": "parallel_tool_calls",
}
COMPLETION_PARAMS = {
    **_GENERATION_PARAMS,
    "logprobs": "logprobs",
    "logprobs.top_logprobs": "logprobs",
    "echo": "echo",
    "prompt": "prompt",
}
EMBEDDING_PARAMS = {
    "model": "model",
    "inputs": "input",
    "dimensions": "dimensions",
    "encoding": "encoding_format",
    "priority": "priority",
}
TOKENIZE_PARAMS = {
    "model": "model",
    "input": "prompt",
    "chat": "messages",
    "chat.messages": "messages",
    "add_special_tokens": "add_special_tokens",
    "tools": "tools",
}
DETOKENIZE_PARAMS = {"model": "model", "token_ids": "tokens"}
MODELS_PARAMS = {"id": "model"}

FINISH_REASONS = {
    generation_pb2.FINISH_REASON_STOP: "stop",
    generation_pb2.FINISH_REASON_LENGTH: "length",
    generation_pb2.FINISH_REASON_CONTEXT_LENGTH: "length",
    generation_pb2.FINISH_REASON_TIME_LIMIT: "length",
    generation_pb2.FINISH_REASON_ABORTED: "stop",
    generation_pb2.FINISH_REASON_TOOL_CALLS: "tool_calls",
}


# Requests.


def _set_sent(message: Message, values: Mapping[str, Any]) -> None:
    """Sets only the fields the client sent, so that unset keeps meaning "model default"."""
    for name, value in values.items():
        if value is not None:
            setattr(message, name, value)


def _apply_generation_params(body: schemas.GenerationBody, request: generation_pb2.GenerateRequest) -> None:
    _set_sent(
        request.sampling,
        {
            "n": body.n,
            "temperature": body.temperature,
            "top_p": body.top_p,
            "top_k": body.top_k,
            "min_p": body.min_p,
            # OpenAI seeds are signed; the proto's is uint64.
            "seed": None if body.seed is None else body.seed % 2**64,
        },
    )
    _set_sent(
        request.penalties,
        {
            "presence_penalty": body.presence_penalty,
            "frequency_penalty": body.frequency_penalty,
            "repetition_penalty": body.repetition_penalty,
        },
    )
    for token_id, bias in (body.logit_bias or {}).items():
        request.penalties.logit_bias[token_id] = bias
    _set_sent(
        request.stopping,
        {
            "max_new_tokens": body.max_new_tokens,
            "min_new_tokens": body.min_tokens,
            "include_stop_string": body.include_stop_str_in_output,
            "ignore_eos": body.ignore_eos,
        },
    )
    if body.stop:
        request.stopping.stop.extend(body.stop)
    if body.stop_token_ids:
        request.stopping.stop_token_ids.extend(body.stop_token_ids)
    _set_sent(request.response, {"skip_special_tokens": body.skip_special_tokens})
    _set_sent(request, {"priority": body.priority})
    _apply_output_constraint(body, request)


def chat_message(message: schemas.ChatMessage) -> generation_pb2.ChatMessage:
    return generation_pb2.ChatMessage(
        role=message.role,
        content=message.content or "",
        name=message.name or "",
        tool_call_id=message.tool_call_id or "",
        tool_calls=[
            generation_pb2.ToolCall(
                id=call.id,
                type=call.type,
                function=generation_pb2.FunctionCall(name=call.function.name, arguments=call.function.arguments),
            )
            for call in message.tool_calls or ()
        ],
    )


def chat_prompt(
    messages: Sequence[schemas.ChatMessage], add_generation_prompt: bool | None
) -> generation_pb2.ChatPrompt:
    prompt = generation_pb2.ChatPrompt(messages=[chat_message(m) for m in messages])
    if add_generation_prompt is not None:
        prompt.add_generation_prompt = add_generation_prompt
    return prompt


def chat_request(body: schemas.ChatCompletionRequest, request_id: str) -> generation_pb2.GenerateRequest:
    request = generation_pb2.GenerateRequest(
        request_id=request_id,
        model=body.model or "",
        chat=chat_prompt(body.messages, body.add_generation_prompt),
    )
    _apply_generation_params(body, request)
    if body.logprob_alternatives is not None:
        request.logprobs.top_logprobs = body.logprob_alternatives
    _apply_tools(body, request)
    return request


_TOOL_CHOICE_MODES = {
    "none": generation_pb2.TOOL_CHOICE_MODE_NONE,
    "auto": generation_pb2.TOOL_CHOICE_MODE_AUTO,
    "required": generation_pb2.TOOL_CHOICE_MODE_REQUIRED,
}


def _proto_tools(tools: Sequence[schemas.Tool] | None) -> list[generation_pb2.Tool]:
    return [
        generation_pb2.Tool(
            type="function",
            function=generation_pb2.FunctionDefinition(
                name=tool.function.name,
                description=tool.function.description or "",
                parameters="" if tool.function.parameters is None else json.dumps(tool.function.parameters),
            ),
        )
        for tool in tools or ()
    ]


def _apply_tools(body: schemas.ChatCompletionRequest, request: generation_pb2.GenerateRequest) -> None:
    request.tools.extend(_proto_tools(body.tools))
    if isinstance(body.tool_choice, schemas.NamedToolChoice):
        request.tool_choice.function_name = body.tool_choice.function.name
    elif body.tool_choice is not None:
        request.tool_choice.mode = _TOOL_CHOICE_MODES[body.tool_choice]
    _set_sent(request, {"parallel_tool_calls": body.parallel_tool_calls})


def _apply_output_constraint(body: schemas.GenerationBody, request: generation_pb2.GenerateRequest) -> None:
    """response_format or one of vLLM's extras (the schema allows one at most)."""
    constraint = body.output_constraint
    if constraint is None:
        return
    output, value = request.structured_output, constraint.value
    if constraint.kind == "json_object":
        output.json_object = True
    elif constraint.kind == "json_schema":
        output.json_schema = value if isinstance(value, str) else json.dumps(value)
    elif constraint.kind == "choice":
        output.choice.values.extend(value)
    else:
        setattr(output, constraint.kind, value)  # regex, grammar


STRUCTURED_OUTPUT_FIELDS = tuple(
    f"structured_output{suffix}" for suffix in ("", ".json_object", ".json_schema", ".regex", ".choice", ".grammar")
)


def request_params(fmt: GenerationFormat, body: schemas.GenerationBody) -> dict[str, str]:
    """`fmt`'s map from proto field paths to OpenAI params, plus the one this request's output
    constraint came in (response_format or one of vLLM's extras)."""
    constraint = body.output_constraint
    if constraint is None:
        return dict(fmt.params)
    return {**fmt.params, **dict.fromkeys(STRUCTURED_OUTPUT_FIELDS, constraint.param)}


def completion_requests(body: schemas.CompletionRequest, request_id: str) -> list[generation_pb2.GenerateRequest]:
    """One request per prompt; the worker serves one prompt per call."""
    template = generation_pb2.GenerateRequest(request_id=request_id, model=body.model or "", echo=bool(body.echo))
    _apply_generation_params(body, template)
    if body.logprobs is not None:
        # With echo, the prompt's tokens are scored too (they come first in the logprobs).
        template.logprobs.CopyFrom(
            generation_pb2.LogprobOptions(top_logprobs=body.logprobs, prompt_logprobs=bool(body.echo))
        )
    requests = []
    for prompt in body.prompt:
        request = generation_pb2.GenerateRequest()
        request.CopyFrom(template)
        if isinstance(prompt, str):
            request.text = prompt
        else:
            request.token_ids.CopyFrom(common_pb2.TokenIds(ids=prompt))
        requests.append(request)
    return requests


def embed_request(body: schemas.EmbeddingRequest, request_id: str) -> embedding_pb2.EmbedRequest:
    request = embedding_pb2.EmbedRequest(
        request_id=request_id,
        model=body.model or "",
        inputs=[
            embedding_pb2.EmbedInput(text=item)
            if isinstance(item, str)
            else embedding_pb2.EmbedInput(token_ids=common_pb2.TokenIds(ids=item))
            for item in body.input
        ],
        encoding=(
            embedding_pb2.EMBEDDING_ENCODING_PACKED_FLOAT32
            if body.encoding_format == "base64"
            else embedding_pb2.EMBEDDING_ENCODING_FLOAT
        ),
    )
    _set_sent(request, {"dimensions": body.dimensions, "priority": body.priority})
    return request


def tokenize_request(body: schemas.TokenizeRequest) -> tokenization_pb2.TokenizeRequest:
    request = tokenization_pb2.TokenizeRequest(
        model=body.model or "", return_tokens=body.return_token_strs, tools=_proto_tools(body.tools)
    )
    if body.messages is not None:
        request.chat.CopyFrom(chat_prompt(body.messages, body.add_generation_prompt))
    else:
        request.text = body.prompt or ""
    _set_sent(request, {"add_special_tokens": body.add_special_tokens})
    return request


def detokenize_request(body: schemas.DetokenizeRequest) -> tokenization_pb2.DetokenizeRequest:
    request = tokenization_pb2.DetokenizeRequest(model=body.model or "", token_ids=body.tokens)
    _set_sent(request, {"skip_special_tokens": body.skip_special_tokens})
    return request


# Responses.


@dataclass(frozen=True)
class ResponseHeader:
    """What every response and every chunk of one stream share."""

    id: str
    created: int
    model: str

    @classmethod
    def new(cls, id_prefix: str, model: str) -> ResponseHeader:
        return cls(id=f"{id_prefix}-{uuid.uuid4().hex}", created=int(time.time()), model=model)

    def fields(self, object_name: str) -> dict[str, Any]:
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.model}


def finish_reason(finish: generation_pb2.FinishInfo) -> str:
    return FINISH_REASONS.get(finish.reason, "stop")


def sum_usage(usages: Iterable[common_pb2.Usage]) -> common_pb2.Usage:
    total = common_pb2.Usage()
    for usage in usages:
        total.prompt_tokens += usage.prompt_tokens
        total.completion_tokens += usage.completion_tokens
        total.total_tokens += usage.total_tokens
        total.cached_tokens += usage.cached_tokens
        total.estimated_cost += usage.estimated_cost
    return total


def usage_dict(usage: common_pb2.Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "estimated_cost": usage.estimated_cost,
    }


def _chat_token(entry: generation_pb2.TokenLogprob) -> dict[str, Any]:
    return {
        "token": entry.token,
        "logprob": entry.logprob,
        "bytes": list(entry.bytes),
        "top_logprobs": [
            {"token": top.token, "logprob": top.logprob, "bytes": list(top.bytes)} for top in entry.top_logprobs
        ],
    }


class _ChoiceLogprobs:
    """The logprobs one choice shows, fed its deltas (or its whole sequence) in order.

    Shown: the prompt's tokens first (echo), then the generated tokens of the text. Left out: the
    EOS or stop token that ended the sequence, and tokens wholly inside a stop string that was
    cut from the text (neither is part of the output).
    """

    def __init__(self) -> None:
        self._pending: list[generation_pb2.TokenLogprob] = []
        self._text_bytes = 0  # generated text so far
        self._token_bytes = 0  # generated tokens so far

    def add(self, output: generation_pb2.SequenceDelta | generation_pb2.Sequence) -> None:
        self._pending.extend(output.prompt_logprobs)
        self._text_bytes += len(output.text.encode())
        generated = list(output.logprobs)
        finish = output.finish if output.HasField("finish") else None
        if finish is not None and finish.HasField("stop_token_id") and generated:
            if generated[-1].token_id == finish.stop_token_id:
                generated.pop()
        for entry in generated:
            if finish is not None and finish.stop_string and self._token_bytes >= self._text_bytes:
                break
            self._token_bytes += len(entry.bytes)
            self._pending.append(entry)

    def _take(self) -> list[generation_pb2.TokenLogprob]:
        entries, self._pending = self._pending, []
        return entries


class ChatLogprobs(_ChoiceLogprobs):
    """OpenAI's chat logprobs: {"content": [{token, logprob, bytes, top_logprobs}], "refusal"}."""

    def whole(self) -> dict[str, Any]:
        return {"content": [_chat_token(entry) for entry in self._take()], "refusal": None}

    def chunk(self) -> dict[str, Any] | None:
        # Like OpenAI, a chunk without tokens (the finishing one) has null logprobs.
        return self.whole() if self._pending else None


class CompletionLogprobs(_ChoiceLogprobs):
    """The legacy completions logprobs: tokens, token_logprobs, top_logprobs (token → logprob, the
    sampled token included) and text_offset, which counts on across chunks.

    Offsets are in characters of the choice's text (echoed prompt included); a token that starts
    inside a multi-byte character gets that character's offset, and one the text leaves out (a
    special token under skip_special_tokens) the offset of what follows.
    """

    def __init__(self) -> None:
        super().__init__()
        self._chars = 0
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def chunk(self) -> dict[str, Any]:
        shaped: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for entry in self._take():
            shaped["tokens"].append(entry.token)
            shaped["text_offset"].append(self._chars)
            if not entry.skipped:  # a special token the text leaves out
                self._chars += len(self._utf8.decode(entry.bytes))
            if not entry.HasField("logprob"):  # the first prompt token: nothing precedes it
                shaped["token_logprobs"].append(None)
                shaped["top_logprobs"].append(None)
                continue
            shaped["token_logprobs"].append(entry.logprob)
            top = {alternative.token: alternative.logprob for alternative in entry.top_logprobs}
            top.setdefault(entry.token, entry.logprob)
            shaped["top_logprobs"].append(top)
        return shaped

    whole = chunk


def tool_calls_json(calls: Iterable[generation_pb2.ToolCall]) -> list[dict[str, Any]]:
    return [
        {
            "id": call.id,
            "type": call.type or "function",
            "function": {"name": call.function.name, "arguments": call.function.arguments},
        }
        for call in calls
    ]


def _chat_message(sequence: generation_pb2.Sequence) -> dict[str, Any]:
    """With tool calls, content is null unless the model also wrote text (OpenAI's shape)."""
    message: dict[str, Any] = {"role": "assistant", "content": sequence.text, "refusal": None}
    if sequence.tool_calls:
        message["content"] = sequence.text or None
        message["tool_calls"] = tool_calls_json(sequence.tool_calls)
    return message


def _chat_choice(index: int, sequence: generation_pb2.Sequence) -> dict[str, Any]:
    return {
        "index": index,
        "message": _chat_message(sequence),
        "logprobs": None,
        "finish_reason": finish_reason(sequence.finish),
    }


def tool_call_delta_json(delta: generation_pb2.ToolCallDelta) -> dict[str, Any]:
    """A streamed tool-call delta: the first of a call carries index, id, type and function.name
    (with arguments, "" or a first fragment); later ones only index and an arguments fragment."""
    if delta.id:
        return {
            "index": delta.index,
            "id": delta.id,
            "type": delta.type or "function",
            "function": {"name": delta.function.name, "arguments": delta.function.arguments},
        }
    return {"index": delta.index, "function": {"arguments": delta.function.arguments}}


def chat_tool_calls_chunk_choice(
    index: int, deltas: Iterable[generation_pb2.ToolCallDelta], reason: str | None
) -> dict[str, Any]:
    return {
        "index": index,
        "delta": {"tool_calls": [tool_call_delta_json(delta) for delta in deltas]},
        "logprobs": None,
        "finish_reason": reason,
    }


def _completion_choice(index: int, sequence: generation_pb2.Sequence) -> dict[str, Any]:
    reason = finish_reason(sequence.finish)
    # With echo, the worker sends the prompt in prompt_text (empty otherwise).
    text = sequence.prompt_text + sequence.text
    return {"index": index, "text": text, "logprobs": None, "finish_reason": reason}


def _chat_chunk_opening(index: int) -> dict[str, Any]:
    return {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}


def _chat_chunk_choice(index: int, text: str, reason: str | None) -> dict[str, Any]:
    return {"index": index, "delta": {"content": text} if text else {}, "logprobs": None, "finish_reason": reason}


def _completion_chunk_choice(index: int, text: str, reason: str | None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": reason}


@dataclass(frozen=True)
class GenerationFormat:
    """How one generation endpoint (chat or completions) shapes its answers."""

    id_prefix: str
    object_name: str
    chunk_object_name: str
    params: Mapping[str, str]
    choice: Callable[[int, generation_pb2.Sequence], dict[str, Any]]
    chunk_choice: Callable[[int, str, str | None], dict[str, Any]]
    # The chunk each choice starts with before any text, if the format has one.
    opening_choice: Callable[[int], dict[str, Any]] | None = None
    # Shapes one choice's logprobs (a fresh one per choice: completions count offsets on).
    logprobs: Callable[[], ChatLogprobs | CompletionLogprobs] = ChatLogprobs


CHAT = GenerationFormat(
    id_prefix="chatcmpl",
    object_name="chat.completion",
    chunk_object_name="chat.completion.chunk",
    params=CHAT_PARAMS,
    choice=_chat_choice,
    chunk_choice=_chat_chunk_choice,
    opening_choice=_chat_chunk_opening,
    logprobs=ChatLogprobs,
)
COMPLETION = GenerationFormat(
    id_prefix="cmpl",
    object_name="text_completion",
    chunk_object_name="text_completion",
    params=COMPLETION_PARAMS,
    choice=_completion_choice,
    chunk_choice=_completion_chunk_choice,
    logprobs=CompletionLogprobs,
)


def generation_response(
    fmt: GenerationFormat,
    responses: Sequence[generation_pb2.GenerateResponse],
    n: int,
    header: ResponseHeader,
    logprobs: bool = False,
) -> dict[str, Any]:
    """The non-streaming answer; response i holds the n choices of prompt i (index i·n + j).
    With `logprobs` (the request asked for them), every choice carries its logprobs."""
    choices = []
    for prompt_index, response in enumerate(responses):
        for sequence in response.sequences:
            choice = fmt.choice(prompt_index * n + sequence.index, sequence)
            if logprobs:
                shaper = fmt.logprobs()
                shaper.add(sequence)
                choice["logprobs"] = shaper.whole()
            choices.append(choice)
    choices.sort(key=lambda choice: choice["index"])
    return {
        **header.fields(fmt.object_name),
        "choices": choices,
        "usage": usage_dict(sum_usage(response.usage for response in responses)),
    }


def stream_chunk(
    fmt: GenerationFormat,
    header: ResponseHeader,
    choices: list[dict[str, Any]],
    include_usage: bool,
    usage: common_pb2.Usage | None = None,
) -> dict[str, Any]:
    """One chunk; with include_usage every chunk has a `usage` key, null but on the last one."""
    chunk = {**header.fields(fmt.chunk_object_name), "choices": choices}
    if include_usage:
        chunk["usage"] = None if usage is None else usage_dict(usage)
    return chunk


def embedding_response(
    response: embedding_pb2.EmbedResponse, model: str, encoding_format: str | None
) -> dict[str, Any]:
    def vector(embedding: embedding_pb2.EmbeddingVector) -> list[float] | str:
        if encoding_format == "base64":
            return base64.b64encode(embedding.packed).decode("ascii")
        return list(embedding.values)

    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": embedding.index, "embedding": vector(embedding)}
            for embedding in sorted(response.embeddings, key=lambda e: e.index)
        ],
        "model": model,
        "usage": {
            "prompt_tokens": response.usage.prompt_tokens,
            "total_tokens": response.usage.total_tokens,
            "estimated_cost": response.usage.estimated_cost,
        },
    }


_MODEL_KINDS = {models_pb2.MODEL_KIND_GENERATION: "generation", models_pb2.MODEL_KIND_EMBEDDING: "embedding"}


def model_card(info: models_pb2.ModelInfo) -> dict[str, Any]:
    """OpenAI's model object, plus what addresses this deployment (`id:version`, `deploy_id:ID`),
    and a generation model's KV cache."""
    card: dict[str, Any] = {
        "id": info.id,
        "object": "model",
        "created": info.created,
        "owned_by": info.owned_by or "tokenwire",
        "version": info.version,
        "deploy_id": info.deploy_id,
        "kind": _MODEL_KINDS.get(info.kind),
        "context_length": info.context_length,
    }
    if info.HasField("kv_cache"):
        cache = info.kv_cache
        card["kv_cache"] = {
            "block_size": cache.block_size,
            "blocks": cache.blocks,
            "tokens": cache.tokens,
            "prefix_caching": cache.prefix_caching,
            "bytes_per_token": cache.bytes_per_token,
        }
    return card


def models_list(response: models_pb2.ListModelsResponse) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(info) for info in response.models]}


def tokenize_response(response: tokenization_pb2.TokenizeResponse, return_token_strs: bool) -> dict[str, Any]:
    return {
        "count": len(response.token_ids),
        "max_model_len": response.context_length,
        "tokens": list(response.token_ids),
        "token_strs": list(response.tokens) if return_token_strs else None,
    }


def detokenize_response(response: tokenization_pb2.DetokenizeResponse) -> dict[str, Any]:
    return {"prompt": response.text}
