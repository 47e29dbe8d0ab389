"""GenerateRequest (protobuf) → the engine's GenerationRequest: defaults, ranges, context length.

The gRPC API is public, so every range is checked here even though the REST bridge checks the
OpenAI ones too. Unset optional fields take the model's defaults, never zero.
"""
from __future__ import annotations

import random
from typing import Any

from service.engine.engine import kv_cache_exceeded_message
from service.engine.types import GenerationRequest, SamplingParams, StoppingParams
from service.errors import ContextLengthExceeded, InvalidRequest, KvCacheExceeded
from service.models.registry import GenerationModel
from service.servicers.prompt_input import generation_prompt_ids
from service.structured.plan import OutputPlan
from service.text.encoding import min_token_count
from tokenwire.v1 import generation_pb2

MAX_N = 128
MAX_STOP_STRINGS = 16
MAX_TOP_LOGPROBS = 20


def _optional(message: Any, name: str, default: Any) -> Any:
    return getattr(message, name) if message.HasField(name) else default


def _check_range(value: float, low: float, high: float, field: str, *, low_open: bool = False) -> None:
    # Written as "inside" so that NaN, which fails every comparison, is out of range.
    inside = low < value <= high if low_open else low <= value <= high
    if not inside:
        interval = f"{'(' if low_open else '['}{low}, {high}]"
        raise InvalidRequest(f"`{field.split('.')[-1]}` must be in {interval}, got {value}.", field=field)


def _sampling(request: generation_pb2.GenerateRequest, model: GenerationModel) -> SamplingParams:
    s, p, defaults = request.sampling, request.penalties, model.sampling_defaults
    params = SamplingParams(
        temperature=_optional(s, "temperature", defaults.get("temperature", 1.0)),
        top_p=_optional(s, "top_p", defaults.get("top_p", 1.0)),
        top_k=_optional(s, "top_k", defaults.get("top_k", 0)),
        min_p=_optional(s, "min_p", defaults.get("min_p", 0.0)),
        presence_penalty=_optional(p, "presence_penalty", 0.0),
        frequency_penalty=_optional(p, "frequency_penalty", 0.0),
        repetition_penalty=_optional(p, "repetition_penalty", defaults.get("repetition_penalty", 1.0)),
        logit_bias=dict(p.logit_bias),
    )
    _check_range(params.temperature, 0.0, 2.0, "sampling.temperature")
    _check_range(params.top_p, 0.0, 1.0, "sampling.top_p", low_open=True)
    _check_range(params.min_p, 0.0, 1.0, "sampling.min_p")
    _check_range(params.presence_penalty, -2.0, 2.0, "penalties.presence_penalty")
    _check_range(params.frequency_penalty, -2.0, 2.0, "penalties.frequency_penalty")
    _check_range(params.repetition_penalty, 0.01, 5.0, "penalties.repetition_penalty")
    vocab = len(model.tokenizer)
    for token, bias in params.logit_bias.items():
        if token >= vocab:
            raise InvalidRequest(f"logit_bias: token id {token} is outside the vocabulary.", field="penalties.logit_bias")
        _check_range(bias, -100.0, 100.0, "penalties.logit_bias")
    return params


def _check_room(context: int, prompt_tokens: int, *, at_least: bool = False) -> None:
    """ContextLengthExceeded when the prompt (`at_least`: a lower bound of its length) leaves no
    room for the completion."""
    if prompt_tokens >= context:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context} tokens. However, your prompt is "
            f"{'at least ' if at_least else ''}{prompt_tokens} tokens long, which leaves no room for "
            f"the completion. Please reduce the length of the prompt.",
            field="prompt",
        )


def _stopping(
    request: generation_pb2.GenerateRequest, model: GenerationModel, prompt_tokens: int
) -> StoppingParams:
    st = request.stopping
    context = model.card.context_length
    _check_room(context, prompt_tokens)
    # The KV cache may hold fewer tokens than the context: unset, max_new_tokens fills the smaller.
    capacity = model.engine.max_sequence_tokens
    if prompt_tokens >= capacity:
        raise KvCacheExceeded(kv_cache_exceeded_message(capacity, prompt_tokens, 1), field="prompt")
    room = min(context, capacity) - prompt_tokens
    max_new = _optional(st, "max_new_tokens", room)
    if max_new < 1:
        raise InvalidRequest("`max_new_tokens` must be at least 1.", field="stopping.max_new_tokens")
    if prompt_tokens + max_new > context:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_tokens + max_new} tokens ({prompt_tokens} in the prompt, {max_new} for the "
            f"completion). Please reduce the length of the prompt or completion.",
            field="prompt",
        )
    if prompt_tokens + max_new > capacity:
        raise KvCacheExceeded(
            kv_cache_exceeded_message(capacity, prompt_tokens, max_new), field="stopping.max_new_tokens"
        )
    min_new = _optional(st, "min_new_tokens", 0)
    if min_new > max_new:
        raise InvalidRequest(
            f"`min_new_tokens` ({min_new}) must not exceed `max_new_tokens` ({max_new}).",
            field="stopping.min_new_tokens",
        )
    if len(st.stop) > MAX_STOP_STRINGS or any(not s for s in st.stop):
        raise InvalidRequest(
            f"`stop` takes at most {MAX_STOP_STRINGS} non-empty strings.", field="stopping.stop"
        )
    vocab = len(model.tokenizer)
    if any(t >= vocab for t in st.stop_token_ids):
        raise InvalidRequest("A stop token id is outside the vocabulary.", field="stopping.stop_token_ids")
    time_limit = _optional(st, "time_limit_ms", None)
    return StoppingParams(
        max_new_tokens=max_new,
        min_new_tokens=min_new,
        stop_strings=tuple(st.stop),
        stop_token_ids=frozenset(st.stop_token_ids),
        include_stop_string=st.include_stop_string,
        ignore_eos=st.ignore_eos,
        time_limit_s=time_limit / 1000 if time_limit else None,
        max_new_tokens_is_context_limit=not st.HasField("max_new_tokens"),
    )


def _logprobs(request: generation_pb2.GenerateRequest) -> tuple[int | None, int | None]:
    """(alternatives per generated token, alternatives per prompt token); None: not asked."""
    if not request.HasField("logprobs"):
        return None, None
    top = request.logprobs.top_logprobs
    _check_range(top, 0, MAX_TOP_LOGPROBS, "logprobs.top_logprobs")
    return top, top if request.logprobs.prompt_logprobs else None


def echo_skips_special_tokens(request: generation_pb2.GenerateRequest) -> bool:
    """Whether the echoed prompt leaves special tokens out: only decoded token ids do."""
    return request.WhichOneof("prompt") == "token_ids" and _optional(request.response, "skip_special_tokens", True)


def echoed_prompt(request: generation_pb2.GenerateRequest, tokenizer: Any, prompt_ids: tuple[int, ...]) -> str:
    """The prompt as `echo` returns it: text as sent, token ids decoded, chat as rendered."""
    if request.WhichOneof("prompt") == "text":
        return request.text
    return tokenizer.decode(list(prompt_ids), skip_special_tokens=echo_skips_special_tokens(request))


def build_engine_request(
    request: generation_pb2.GenerateRequest,
    model: GenerationModel,
    request_id: str,
    output: OutputPlan | None = None,
) -> GenerationRequest:
    """`output`: the request's structured output and tools, from structured.output_plan().

    Tokenizes the prompt, which takes seconds for megabytes of text: call it off the event loop.
    A text prompt or a rendered chat that cannot fit the context is refused before that (exact
    lower bound).
    """
    output = output or OutputPlan()
    n = _optional(request.sampling, "n", 1)
    if not 1 <= n <= min(MAX_N, model.engine.max_running):
        raise InvalidRequest(
            f"`n` must be between 1 and {min(MAX_N, model.engine.max_running)} on this worker, got {n}.",
            field="sampling.n",
        )
    sampling = _sampling(request, model)

    def fits(text: str) -> None:
        _check_room(model.card.context_length, min_token_count(model.tokenizer, text), at_least=True)

    prompt_ids = generation_prompt_ids(request, model.tokenizer, output.prompt_tools, fits)
    stopping = _stopping(request, model, len(prompt_ids))
    seed = _optional(request.sampling, "seed", None)
    skip_special = _optional(request.response, "skip_special_tokens", True)
    logprobs, prompt_logprobs = _logprobs(request)
    return GenerationRequest(
        request_id=request_id,
        prompt_ids=tuple(prompt_ids),
        sampling=sampling,
        stopping=stopping,
        n=n,
        seed=random.getrandbits(63) if seed is None else seed,
        skip_special_tokens=skip_special,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        constraint=output.constraint,
        priority=request.priority,
    )
