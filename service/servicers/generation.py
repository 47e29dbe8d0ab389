"""tokenwire.v1.Generation: validate → engine → protobuf messages. No generation logic here."""
from __future__ import annotations

import logging
from typing import AsyncIterator

import grpc

from service.engine.types import Finish, FinishReason, GenerationRequest, SequenceUpdate
from service.models.registry import GenerationModel, ModelRegistry
from service.servicers.generation_request import build_generation_request
from service.servicers.request_context import request_id
from tokenwire.v1 import common_pb2, generation_pb2, generation_pb2_grpc

log = logging.getLogger(__name__)

_FINISH_REASONS = {
    FinishReason.STOP: generation_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: generation_pb2.FINISH_REASON_LENGTH,
    FinishReason.CONTEXT_LENGTH: generation_pb2.FINISH_REASON_CONTEXT_LENGTH,
    FinishReason.TIME_LIMIT: generation_pb2.FINISH_REASON_TIME_LIMIT,
}


def finish_info(finish: Finish) -> generation_pb2.FinishInfo:
    info = generation_pb2.FinishInfo(reason=_FINISH_REASONS[finish.reason], stop_string=finish.stop_string)
    if finish.stop_token_id is not None:
        info.stop_token_id = finish.stop_token_id
    return info


def _prompt_info(model: GenerationModel, request: GenerationRequest) -> generation_pb2.PromptInfo:
    return generation_pb2.PromptInfo(
        model=model.card.model_id,
        prompt_tokens=len(request.prompt_ids),
        seed=request.seed,
        max_new_tokens=request.stopping.max_new_tokens,
    )


def _usage(model: GenerationModel, prompt_tokens: int, completion_tokens: int) -> common_pb2.Usage:
    return common_pb2.Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        estimated_cost=model.card.cost(prompt_tokens, completion_tokens),
    )


class GenerationServicer(generation_pb2_grpc.GenerationServicer):
    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    async def _events(
        self, request: generation_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generation_pb2.PromptInfo | SequenceUpdate | common_pb2.Usage]:
        """PromptInfo once admitted, the engine's updates, then Usage. Leaving early (client
        cancel, deadline) cancels the request in the engine."""
        model = self._registry.generation(request.model)
        engine_request = build_generation_request(request, model, request_id(context, request.request_id))
        stream = model.engine.submit(engine_request)
        try:
            yield _prompt_info(model, engine_request)
            completion_tokens = 0
            async for update in stream:
                completion_tokens += len(update.token_ids)
                yield update
            yield _usage(model, len(engine_request.prompt_ids), completion_tokens)
        finally:
            stream.cancel()

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
                delta = generation_pb2.SequenceDelta(
                    index=event.index, text=event.text, token_ids=event.token_ids if with_ids else ()
                )
                if event.finish is not None:
                    delta.finish.CopyFrom(finish_info(event.finish))
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
                sequence = response.sequences[event.index]
                texts.setdefault(event.index, []).append(event.text)
                if request.response.token_ids:
                    sequence.token_ids.extend(event.token_ids)
                if event.finish is not None:
                    sequence.finish.CopyFrom(finish_info(event.finish))
        for index, parts in texts.items():
            response.sequences[index].text = "".join(parts)
        return response
