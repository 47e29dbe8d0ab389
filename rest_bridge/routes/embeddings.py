"""POST /v1/embeddings."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rest_bridge import calls
from rest_bridge.routes.common import parse_body, request_id, until_ready, worker_calls
from rest_bridge.schemas import EmbeddingRequest


async def create_embedding(request: Request) -> Response:
    body = await parse_body(request, EmbeddingRequest)
    answer = calls.embedding_json(worker_calls(request, body.model), body, request_id(request))
    return JSONResponse(await until_ready(request, [], answer))
