"""tokenwire.v1.Generation: validate → engine → protobuf messages. No generation logic here."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

import grpc

from service.engine.types import Finish, FinishReason, GenerationRequest, SequenceUpdate, TokenLogprob
from service.metrics import GenerationRecorder
from service.models.registry import GenerationModel, ModelRegistry
from service.servicers.engine_request import build_engine_request, echo_skips_special_tokens, echoed_prompt
from service.servicers.request_context import request_id, set_trailing_metadata
from service.structured.plan import output_plan
from service.structured.reader import merge_tool_call_deltas
from service.text.token_texts import TokenTexts
from tokenwire import tracing
from tokenwire.v1 import common_pb2, generation_pb2, generation_pb2_grpc

log = logging.getLogger(__name__)

_FINISH_REASONS = {
    FinishReason.STOP: generation_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: generation_pb2.FINISH_REASON_LENGTH,
    FinishReason.CONTEXT_LENGTH: generation_pb2.FINISH_REASON_CONTEXT_LENGTH,
    FinishReason.TIME_LIMIT: generation_pb2.FINISH_REASON_TIME_LIMIT,
    FinishReason.ABORTED: generation_pb2.FINISH_REASON_ABORTED,
}


def finish_info(finish: Finish) -> generation_pb2.FinishInfo:
    info = generation_pb2.FinishInfo(reason=_FINISH_REASONS[finish.reason], stop_string=finish.stop_string)
    if finish.stop_token_id is not None:
        info.stop_token_id = finish.stop_token_id
    return info


def _top_logprob(texts: TokenTexts, token_id: int, logprob: float) -> generation_pb2.TopLogprob:
    text, raw = texts(token_id)
    return generation_pb2.TopLogprob(token_id=token_id, token=text, bytes=raw, logprob=logprob)


def token_logprob(
    texts: TokenTexts, token_id: int, scored: TokenLogprob | None, skip_special_tokens: bool
) -> generation_pb2.TokenLogprob:
    """One token's logprob message; `scored` None (the first prompt token) leaves logprob unset.
    `skip_special_tokens`: whether the text the token belongs to leaves special tokens out."""
    text, raw = texts(token_id)
    skipped = skip_special_tokens and token_id in texts.special_ids
    message = generation_pb2.TokenLogprob(token_id=token_id, token=text, bytes=raw, skipped=skipped)
    if scored is not None:
        message.logprob = scored.logprob
        message.top_logprobs.extend(_top_logprob(texts, top_id, lp) for top_id, lp in scored.top)
    return message


@dataclass
class _Extras:
    """What a sequence update carries besides text and token ids: logprobs and the echo."""

    logprobs: list[generation_pb2.TokenLogprob]
    prompt_logprobs: list[generation_pb2.TokenLogprob]
    prompt_text: str
    # With tools: the tool-call deltas parsed from the update's text (the text keeps the content).
    tool_calls: list[generation_pb2.ToolCallDelta] = field(default_factory=list)
    # The sequence ended after calling tools under tool_choice auto / required.
    finished_with_tool_calls: bool = False

    def finish_info(self, finish: Finish) -> generation_pb2.FinishInfo:
        info = finish_info(finish)
        if self.finished_with_tool_calls:
            info.reason = generation_pb2.FINISH_REASON_TOOL_CALLS
        return info


@dataclass
class _Timing:
    """When a generation call passed each stage (time.monotonic(), and the engine's step count),
    for its trailing metadata."""

    received: float
    # The engine's steps so far (StepStats.steps), to count a wait in steps rather than time.
    engine_steps: Callable[[], int]
    queued: float = 0.0
    queued_step: int = 0
    first_token: float | None = None
    first_token_step: int | None = None
    finished: float = 0.0
    # Tokens generated per sequence index.
    tokens: dict[int, int] = field(default_factory=dict)

    def submitted(self) -> None:
        self.queued, self.queued_step = time.monotonic(), self.engine_steps()

    def update(self, update: SequenceUpdate) -> None:
        if update.token_ids and self.first_token is None:
            self.first_token, self.first_token_step = time.monotonic(), self.engine_steps()
        self.tokens[update.index] = self.tokens.get(update.index, 0) + len(update.token_ids)

    def stages(self, admitted: float | None) -> list[tuple[str, float, float]]:
        """(name, start, end) of each stage the call reached, for its trace: validation (with the
        tokenizing), queue, prompt (up to the first token) and generation."""
        starts = [("validation", self.received), ("queue", self.queued or None), ("prompt", admitted),
                  ("generation", self.first_token)]
        reached = [(name, start) for name, start in starts if start is not None]
        ends = [start for _, start in reached[1:]] + [self.finished or time.monotonic()]
        return [(name, start, end) for (name, start), end in zip(reached, ends)]

    def steps_to_first_token(self) -> dict[str, int | None]:
        first = self.first_token_step
        return {"x-steps-to-first-token": None if first is None else first - self.queued_step}

    def metadata(self, admitted: float | None) -> dict[str, float | None]:
        """Durations in seconds; None where a stage never happened (aborted while queued)."""
        inference = None if admitted is None else self.finished - admitted
        steps = max(self.tokens.values(), default=0)
        return {
            "x-validation-time-ms": self.queued - self.received,
            "x-queue-time-ms": None if admitted is None else admitted - self.queued,
            "x-inference-time-ms": inference,
            "x-time-to-first-token-ms": None if self.first_token is None else self.first_token - self.received,
            "x-time-per-token-ms": inference / steps if inference is not None and steps else None,
        }


def _prompt_info(model: GenerationModel, request: GenerationRequest, cached_tokens: int) -> generation_pb2.PromptInfo:
    return generation_pb2.PromptInfo(
        model=model.card.model_id,
        prompt_tokens=len(request.prompt_ids),
        cached_tokens=cached_tokens,
        seed=request.seed,
        max_new_tokens=request.stopping.max_new_tokens,
    )


def _usage(model: GenerationModel, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> common_pb2.Usage:
    return common_pb2.Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        cached_tokens=cached_tokens,
        estimated_cost=model.card.cost(prompt_tokens, completion_tokens),
    )


class GenerationServicer(generation_pb2_grpc.GenerationServicer):
    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry
        # Per tokenizer (by id; the TokenTexts keeps its tokenizer alive).
        self._token_texts: dict[int, TokenTexts] = {}

    def _texts(self, model: GenerationModel) -> TokenTexts:
        texts = self._token_texts.get(id(model.tokenizer))
        if texts is None:
            texts = self._token_texts[id(model.tokenizer)] = TokenTexts(model.tokenizer)
        return texts

    async def _events(
        self, request: generation_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generation_pb2.PromptInfo | tuple[SequenceUpdate, _Extras] | common_pb2.Usage]:
        """PromptInfo once the engine has admitted the request to its running batch (and knows
        how much of the prompt the prefix cache served), the engine's updates (with their
        logprobs and echo as protobuf), then Usage. Leaving early (client cancel, deadline)
        cancels the request in the engine. A call that ends normally sets the trailing metadata
        (request id, timings)."""
        model = self._registry.generation(request.model)
        timing = _Timing(received=time.monotonic(), engine_steps=lambda: model.engine.stats.steps)
        output = await output_plan(request, model)
        # Tokenizing a long prompt takes seconds: off the event loop, health and other calls go on.
        engine_request = await asyncio.to_thread(
            build_engine_request, request, model, request_id(), output
        )
        tool_calls = output.tool_call_reader()
        prompt_text = echoed_prompt(request, model.tokenizer, engine_request.prompt_ids) if request.echo else ""
        texts = self._texts(model) if request.HasField("logprobs") else None
        timing.submitted()
        stream = model.engine.submit(engine_request)
        recorder = GenerationRecorder(model.card.model_id, engine_request)
        admission = None
        try:
            admission = await stream.admitted()
            cached_tokens = admission.cached_tokens if admission is not None else 0
            yield _prompt_info(model, engine_request, cached_tokens)
            completion_tokens = 0
            started: set[int] = set()
            async for update in stream:
                completion_tokens += len(update.token_ids)
                recorder.update(update)
                timing.update(update)
                first = update.index not in started
                started.add(update.index)
                extras = _Extras([], [], prompt_text if first else "")
                if tool_calls is not None:
                    update, extras.tool_calls, extras.finished_with_tool_calls = tool_calls.read(update)
                if texts is not None:
                    extras.logprobs = [
                        token_logprob(texts, lp.token_id, lp, engine_request.skip_special_tokens)
                        for lp in update.logprobs
                    ]
                    if update.prompt_logprobs is not None:
                        skip = echo_skips_special_tokens(request)
                        extras.prompt_logprobs = [
                            token_logprob(texts, token_id, scored, skip)
                            for token_id, scored in zip(engine_request.prompt_ids, update.prompt_logprobs)
                        ]
                yield update, extras
            timing.finished = time.monotonic()
            yield _usage(model, len(engine_request.prompt_ids), cached_tokens, completion_tokens)
            admitted_at = admission.admitted_at if admission is not None else None
            set_trailing_metadata(context, timing.metadata(admitted_at), timing.steps_to_first_token())
        finally:
            stream.cancel()
            recorder.close()
            parent = tracing.incoming_context(context.invocation_metadata() or ())
            attributes = {"tokenwire.request_id": request_id(), "tokenwire.model": model.card.model_id}
            admitted_at = admission.admitted_at if admission is not None else None
            tracing.record("tokenwire.generate", parent, timing.stages(admitted_at), attributes)

    async def GenerateStream(
        self, request: generation_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generation_pb2.GenerateStreamResponse]:
        with_ids = request.response.token_ids
        async for event in self._events(request, context):
            if isinstance(event, generation_pb2.PromptInfo):
                yield generation_pb2.GenerateStreamResponse(prompt_info=event)
            elif isinstance(event, common_pb2.Usage):
                yield generation_pb2.GenerateStreamResponse(usage=event)
            else:
                update, extras = event
                delta = generation_pb2.SequenceDelta(
                    index=update.index,
                    text=update.text,
                    token_ids=update.token_ids if with_ids else (),
                    logprobs=extras.logprobs,
                    prompt_logprobs=extras.prompt_logprobs,
                    prompt_text=extras.prompt_text,
                    tool_calls=extras.tool_calls,
                )
                if update.finish is not None:
                    delta.finish.CopyFrom(extras.finish_info(update.finish))
                yield generation_pb2.GenerateStreamResponse(delta=delta)

    async def Generate(
        self, request: generation_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.GenerateResponse:
        response = generation_pb2.GenerateResponse()
        texts: dict[int, list[str]] = {}
        async for event in self._events(request, context):
            if isinstance(event, generation_pb2.PromptInfo):
                response.prompt_info.CopyFrom(event)
                response.sequences.extend(
                    generation_pb2.Sequence(index=i) for i in range(request.sampling.n or 1)
                )
            elif isinstance(event, common_pb2.Usage):
                response.usage.CopyFrom(event)
            else:
                update, extras = event
                sequence = response.sequences[update.index]
                texts.setdefault(update.index, []).append(update.text)
                if request.response.token_ids:
                    sequence.token_ids.extend(update.token_ids)
                sequence.logprobs.extend(extras.logprobs)
                sequence.prompt_logprobs.extend(extras.prompt_logprobs)
                if extras.prompt_text:
                    sequence.prompt_text = extras.prompt_text
                merge_tool_call_deltas(sequence.tool_calls, extras.tool_calls)
                if update.finish is not None:
                    sequence.finish.CopyFrom(extras.finish_info(update.finish))
        for index, parts in texts.items():
            response.sequences[index].text = "".join(parts)
        return response
