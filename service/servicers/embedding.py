"""tokenwire.v1.Embedding: validate and tokenize → embedder → protobuf vectors."""
from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np

from service.errors import ContextLengthExceeded, InvalidRequest
from service.models.registry import EmbeddingModel, ModelRegistry
from service.servicers.prompt_input import check_token_ids
from service.servicers.request_context import set_trailing_metadata
from service.text.encoding import with_special_tokens
from tokenwire.limits import MAX_INPUTS
from tokenwire.v1 import common_pb2, embedding_pb2, embedding_pb2_grpc


def _input_ids(request: embedding_pb2.EmbedRequest, model: EmbeddingModel) -> list[list[int]]:
    tokenizer, context = model.tokenizer, model.card.context_length
    if not request.inputs:
        raise InvalidRequest("`inputs` must contain at least one input.", field="inputs")
    if len(request.inputs) > MAX_INPUTS:
        raise InvalidRequest(f"At most {MAX_INPUTS} inputs per request.", field="inputs")
    all_ids = []
    for i, item in enumerate(request.inputs):
        field = f"inputs[{i}]"
        kind = item.WhichOneof("input")
        if kind == "text":
            if not item.text:
                raise InvalidRequest(f"{field} must not be empty.", field=field)
            ids = tokenizer.encode(item.text, add_special_tokens=True)
        elif kind == "token_ids":
            raw = check_token_ids(list(item.token_ids.ids), len(tokenizer), field)
            ids = with_special_tokens(tokenizer, raw)
        else:
            raise InvalidRequest(f"{field} is empty: set text or token_ids.", field=field)
        if len(ids) > context:
            if not request.truncate:
                # Worded for both APIs: REST has `input`, not `inputs`, and no truncation option.
                raise ContextLengthExceeded(
                    f"This model's maximum context length is {context} tokens. However, input {i} is "
                    f"{len(ids)} tokens long. Please reduce the length of the input.",
                    field=field,
                )
            ids = ids[: context - 1] + ids[-1:]  # keep the closing special token
        all_ids.append(ids)
    return all_ids


class EmbeddingServicer(embedding_pb2_grpc.EmbeddingServicer):
    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    async def Embed(
        self, request: embedding_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> embedding_pb2.EmbedResponse:
        received = time.monotonic()
        model = self._registry.embedding(request.model)
        dimension = model.card.embedding_dimension
        dimensions = request.dimensions if request.HasField("dimensions") else None
        if dimensions is not None and not 1 <= dimensions <= dimension:
            raise InvalidRequest(
                f"`dimensions` must be between 1 and {dimension} for this model.", field="dimensions"
            )
        if request.encoding not in embedding_pb2.EmbeddingEncoding.values():
            raise InvalidRequest(f"Unknown encoding {request.encoding}.", field="encoding")
        # Tokenizing long inputs takes seconds: off the event loop, health and other calls go on.
        ids = await asyncio.to_thread(_input_ids, request, model)
        normalize = request.normalize if request.HasField("normalize") else None
        tokenized = time.monotonic()
        vectors = await model.embedder.embed(ids, normalize=normalize, dimensions=dimensions, priority=request.priority)
        # Inference includes waiting for the batch this call's inputs run in.
        timings = {"x-validation-time-ms": tokenized - received, "x-inference-time-ms": time.monotonic() - tokenized}
        response = embedding_pb2.EmbedResponse(model=model.card.model_id)
        packed = request.encoding == embedding_pb2.EMBEDDING_ENCODING_PACKED_FLOAT32
        for index, vector in enumerate(vectors.numpy()):
            if packed:
                response.embeddings.add(index=index, packed=vector.astype("<f4").tobytes())
            else:
                response.embeddings.add(index=index, values=vector.astype(np.float32).tolist())
        prompt_tokens = sum(len(x) for x in ids)
        response.usage.CopyFrom(
            common_pb2.Usage(
                prompt_tokens=prompt_tokens,
                total_tokens=prompt_tokens,
                estimated_cost=model.card.cost(prompt_tokens, 0),
            )
        )
        set_trailing_metadata(context, timings)
        return response
