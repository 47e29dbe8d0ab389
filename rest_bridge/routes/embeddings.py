"""POST /v1/embeddings."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rest_bridge import translate
from rest_bridge.errors import rpc_errors
from rest_bridge.routes.common import parse_body, request_id, stubs_and_options, until_ready
from rest_bridge.schemas import EmbeddingRequest


async def create_embedding(request: Request) -> Response:
    body = await parse_body(request, EmbeddingRequest)
    stubs, options = stubs_and_options(request, model=body.model)
    call = stubs.embedding.Embed(translate.embed_request(body, request_id(request)), **options)
    with rpc_errors(translate.EMBEDDING_PARAMS):
        response = await until_ready(request, [call], call)
    return JSONResponse(translate.embedding_response(response, body.model or response.model, body.encoding_format))
