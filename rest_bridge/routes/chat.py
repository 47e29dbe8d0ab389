"""POST /v1/chat/completions."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from rest_bridge import translate
from rest_bridge.routes.common import generate, parse_body, request_id
from rest_bridge.schemas import ChatCompletionRequest


async def create_chat_completion(request: Request) -> Response:
    body = await parse_body(request, ChatCompletionRequest)
    return await generate(request, translate.CHAT, body, [translate.chat_request(body, request_id(request))])
