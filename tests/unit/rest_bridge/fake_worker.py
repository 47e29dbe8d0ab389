"""A small in-process gRPC worker speaking the real tokenwire.v1 API, for the bridge's tests.

Its behaviour is chosen by the prompt text:
- "overflow": INVALID_ARGUMENT with ErrorInfo CONTEXT_LENGTH_EXCEEDED and a `prompt` violation;
- "busy": RESOURCE_EXHAUSTED with RetryInfo 2.5 s;
- "break": one delta, then UNAVAILABLE;
- "slow": a delta every 20 ms until cancelled (cancellation is recorded);
- anything else: each sequence says "echo: <prompt>" in three deltas, the last with finish STOP.

Generation calls can be made to take a while (`Generation.latency_s`), and a worker with
`Generation.capacity` refuses calls beyond that many open at once, as a full queue does (BUSY).
"""
from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2

from service.api_server import ApiServicers, api_server
from service.errors import ContextLengthExceeded, ModelNotFound, NotReady, QueueFull
from service.servicers.auth import ApiKeyInterceptor
from service.servicers.status import abort_with_error
from tests.in_process import listening
from tokenwire.v1 import common_pb2, embedding_pb2, generation_pb2, models_pb2, tokenization_pb2
from tokenwire.v1.embedding_pb2_grpc import EmbeddingServicer
from tokenwire.v1.generation_pb2_grpc import GenerationServicer
from tokenwire.v1.models_pb2_grpc import ModelsServicer
from tokenwire.v1.tokenization_pb2_grpc import TokenizationServicer

GENERATION_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
CONTEXT_LENGTH = 2048


# The worker's own errors, encoded by the worker's own code (service.servicers.status).
OVERFLOW = ContextLengthExceeded(
    "This model's maximum context length is 2048 tokens; the prompt and max_tokens ask for 5000.",
    field="prompt",
)
BUSY = QueueFull("The queue is full.", retry_after_s=2.5)
BROKEN = NotReady("The engine stopped.")
UNKNOWN_MODEL = ModelNotFound("The model 'nope' does not exist.", field="model")


def prompt_text(request: generation_pb2.GenerateRequest) -> str:
    kind = request.WhichOneof("prompt")
    if kind == "chat":
        return request.chat.messages[-1].content
    if kind == "token_ids":
        return f"tokens {list(request.token_ids.ids)}"
    return request.text


@dataclass
class Record:
    """What the fake worker saw, for assertions."""

    requests: list[object] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    received: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    # The most generation calls admitted and open at once.
    most_open: int = 0

    def keep(self, request: object, context: grpc.aio.ServicerContext) -> None:
        self.received.set()
        self.requests.append(request)
        self.metadata.append({key: value for key, value in context.invocation_metadata() or ()})


def _reply_parts(request: generation_pb2.GenerateRequest) -> list[str]:
    text = f"echo: {prompt_text(request)}"
    third = max(1, len(text) // 3)
    return [text[:third], text[third : 2 * third], text[2 * third :]]


def _n(request: generation_pb2.GenerateRequest) -> int:
    return request.sampling.n if request.sampling.HasField("n") else 1


def _usage(request: generation_pb2.GenerateRequest) -> common_pb2.Usage:
    completion = 3 * _n(request)
    return common_pb2.Usage(
        prompt_tokens=7, completion_tokens=completion, total_tokens=7 + completion, estimated_cost=0.5
    )


def _prompt_info(request: generation_pb2.GenerateRequest) -> generation_pb2.PromptInfo:
    return generation_pb2.PromptInfo(model=GENERATION_MODEL, prompt_tokens=7, seed=1, max_new_tokens=16)


class Generation(GenerationServicer):
    def __init__(self, record: Record) -> None:
        self.record = record
        self.capacity: int | None = None
        self.latency_s = 0.0
        self._open = 0

    @asynccontextmanager
    async def _admitted(
        self, request: generation_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[str]:
        """The prompt text of an admitted request, counted as open until the block ends."""
        self.record.keep(request, context)
        text = prompt_text(request)
        if text == "overflow":
            await abort_with_error(context, OVERFLOW)
        if text == "busy" or (self.capacity is not None and self._open >= self.capacity):
            await abort_with_error(context, BUSY)
        self._open += 1
        self.record.most_open = max(self.record.most_open, self._open)
        try:
            await asyncio.sleep(self.latency_s)
            yield text
        finally:
            self._open -= 1

    async def Generate(self, request, context):
        async with self._admitted(request, context) as text:
            return await self._generate(request, text)

    async def _generate(self, request: generation_pb2.GenerateRequest, text: str) -> generation_pb2.GenerateResponse:
        if text == "slow":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.record.cancelled.set()
                raise
        finish = generation_pb2.FinishInfo(reason=generation_pb2.FINISH_REASON_STOP)
        sequences = [
            generation_pb2.Sequence(index=i, text="".join(_reply_parts(request)), finish=finish)
            for i in range(_n(request))
        ]
        return generation_pb2.GenerateResponse(
            prompt_info=_prompt_info(request), sequences=sequences, usage=_usage(request)
        )

    async def GenerateStream(self, request, context):
        async with self._admitted(request, context) as text:
            async for message in self._generate_stream(request, text, context):
                yield message

    async def _generate_stream(
        self, request: generation_pb2.GenerateRequest, text: str, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generation_pb2.GenerateStreamResponse]:
        yield generation_pb2.GenerateStreamResponse(prompt_info=_prompt_info(request))
        if text == "slow":
            try:
                while True:
                    yield generation_pb2.GenerateStreamResponse(delta=generation_pb2.SequenceDelta(text="."))
                    await asyncio.sleep(0.02)
            # Cancelled while it sleeps, or closed at a yield when the call was cancelled while
            # grpc wrote the last delta: either way the stream ended only because the call did.
            except (asyncio.CancelledError, GeneratorExit):
                self.record.cancelled.set()
                raise
        if text == "break":
            yield generation_pb2.GenerateStreamResponse(delta=generation_pb2.SequenceDelta(text="partial"))
            await abort_with_error(context, BROKEN)
        parts = _reply_parts(request)
        for position, part in enumerate(parts):
            for index in range(_n(request)):
                delta = generation_pb2.SequenceDelta(index=index, text=part)
                if position == len(parts) - 1:
                    delta.finish.reason = generation_pb2.FINISH_REASON_LENGTH
                yield generation_pb2.GenerateStreamResponse(delta=delta)
        yield generation_pb2.GenerateStreamResponse(usage=_usage(request))


class Embedding(EmbeddingServicer):
    def __init__(self, record: Record) -> None:
        self.record = record

    async def Embed(self, request, context):
        self.record.keep(request, context)
        response = embedding_pb2.EmbedResponse(
            model=EMBEDDING_MODEL, usage=common_pb2.Usage(prompt_tokens=4, total_tokens=4)
        )
        # Answered in reverse order: the bridge must sort by index.
        for index in reversed(range(len(request.inputs))):
            values = [float(index), 0.5, -1.0]
            vector = response.embeddings.add(index=index)
            if request.encoding == embedding_pb2.EMBEDDING_ENCODING_PACKED_FLOAT32:
                vector.packed = struct.pack("<3f", *values)
            else:
                vector.values.extend(values)
        return response


def _model_info(model_id: str, kind: int) -> models_pb2.ModelInfo:
    return models_pb2.ModelInfo(
        id=model_id, kind=kind, version="abc123", deploy_id="d1", created=1700000000, owned_by="tokenwire",
        context_length=CONTEXT_LENGTH,
    )


class Models(ModelsServicer):
    MODELS = {
        GENERATION_MODEL: _model_info(GENERATION_MODEL, models_pb2.MODEL_KIND_GENERATION),
        EMBEDDING_MODEL: _model_info(EMBEDDING_MODEL, models_pb2.MODEL_KIND_EMBEDDING),
    }

    async def ListModels(self, request, context):
        return models_pb2.ListModelsResponse(models=list(self.MODELS.values()))

    async def GetModel(self, request, context):
        model_id = request.id.split(":abc123")[0] if not request.id.startswith("deploy_id:") else GENERATION_MODEL
        if model_id not in self.MODELS:
            await abort_with_error(context, UNKNOWN_MODEL)
        return self.MODELS[model_id]


class Tokenization(TokenizationServicer):
    def __init__(self, record: Record) -> None:
        self.record = record

    async def Tokenize(self, request, context):
        self.record.keep(request, context)
        if request.WhichOneof("input") == "chat":
            text = "".join(f"<{m.role}>{m.content}" for m in request.chat.messages)
        else:
            text = request.text
        return tokenization_pb2.TokenizeResponse(
            token_ids=[ord(c) for c in text], tokens=list(text), context_length=CONTEXT_LENGTH
        )

    async def Detokenize(self, request, context):
        return tokenization_pb2.DetokenizeResponse(text="".join(chr(i) for i in request.token_ids))


@dataclass
class FakeWorker:
    # Stopping it early makes the worker go down (fake_worker_serving stops it again, harmlessly).
    server: grpc.aio.Server
    address: str
    record: Record
    health: grpc_health.aio.HealthServicer
    generation: Generation


@asynccontextmanager
async def fake_worker_serving(api_keys: Sequence[str] = ()) -> AsyncIterator[FakeWorker]:
    """A fake worker, serving until the block ends; with `api_keys`, its tokenwire.v1 calls need
    one of them, as the worker's do."""
    record = Record()
    generation = Generation(record)
    servicers = ApiServicers(
        generation=generation, embedding=Embedding(record), tokenization=Tokenization(record), models=Models()
    )
    server, health_servicer = api_server(servicers, [ApiKeyInterceptor(api_keys)] if api_keys else [])
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    async with listening(server) as address:
        yield FakeWorker(server=server, address=address, record=record, health=health_servicer, generation=generation)
