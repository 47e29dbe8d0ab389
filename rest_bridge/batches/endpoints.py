"""The endpoints a batch may target, and how one line runs on each: the body validated as the
endpoint validates it, sent at batch priority, answered as the endpoint answers (not streamed)."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from rest_bridge import calls, schemas, translate
from rest_bridge.errors import APIError, from_validation_error
from rest_bridge.responses import service as responses
from rest_bridge.responses.schemas import ResponseCreateRequest
from rest_bridge.store import Store

Json = dict[str, Any]

# Batch lines run last: the highest value of the int32 priority (lower values are served first).
BATCH_PRIORITY = 2**31 - 1


@dataclass(frozen=True)
class LineContext:
    """What one line's run needs besides its body."""

    worker: calls.Worker
    store: Store
    request_id: str


# A line's body, read as its endpoint reads it.
LineBody = schemas.SamplingRequest | schemas.EmbeddingRequest
Run = Callable[[LineContext, Any], Awaitable[Json]]


async def _chat(line: LineContext, body: schemas.ChatCompletionRequest) -> Json:
    proto = translate.chat_request(body, line.request_id)
    return await calls.generation_json(line.worker, translate.CHAT, body, [proto], interrupted_ok=False)


async def _completion(line: LineContext, body: schemas.CompletionRequest) -> Json:
    protos = translate.completion_requests(body, line.request_id)
    return await calls.generation_json(line.worker, translate.COMPLETION, body, protos, interrupted_ok=False)


async def _embedding(line: LineContext, body: schemas.EmbeddingRequest) -> Json:
    return await calls.embedding_json(line.worker, body, line.request_id)


async def _response(line: LineContext, body: ResponseCreateRequest) -> Json:
    prepared = await responses.prepare(line.store, body, line.request_id)
    return await responses.respond(line.worker, line.store, prepared, interrupted_ok=False)


@dataclass(frozen=True)
class Endpoint:
    schema: type[LineBody]
    run: Run

    def request(self, body: Json) -> LineBody:
        """The line's body as the endpoint reads it, at batch priority; APIError (400) if invalid.
        Streaming has no place in a batch."""
        try:
            parsed = self.schema.model_validate(body)
        except ValidationError as error:
            raise from_validation_error(error) from None
        if getattr(parsed, "stream", None):
            raise APIError(400, "Batch requests cannot be streamed: leave 'stream' out.", param="stream")
        return parsed.model_copy(update={"priority": BATCH_PRIORITY})


ENDPOINTS: dict[str, Endpoint] = {
    "/v1/chat/completions": Endpoint(schemas.ChatCompletionRequest, _chat),
    "/v1/completions": Endpoint(schemas.CompletionRequest, _completion),
    "/v1/embeddings": Endpoint(schemas.EmbeddingRequest, _embedding),
    "/v1/responses": Endpoint(ResponseCreateRequest, _response),
}
