"""POST /v1/completions."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from rest_bridge import translate
from rest_bridge.routes.common import generate, parse_body, request_id
from rest_bridge.schemas import CompletionRequest


async def create_completion(request: Request) -> Response:
    body = await parse_body(request, CompletionRequest)
    requests = translate.completion_requests(body, request_id(request))
    return await generate(request, translate.COMPLETION, body, requests)
