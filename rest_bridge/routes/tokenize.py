"""POST /tokenize and POST /detokenize, in vLLM's shapes."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rest_bridge import translate
from rest_bridge.errors import rpc_errors
from rest_bridge.routes.common import parse_body, stubs_and_options
from rest_bridge.schemas import DetokenizeRequest, TokenizeRequest


async def tokenize(request: Request) -> Response:
    body = await parse_body(request, TokenizeRequest)
    stubs, options = stubs_and_options(request, model=body.model)
    with rpc_errors(translate.TOKENIZE_PARAMS):
        response = await stubs.tokenization.Tokenize(translate.tokenize_request(body), **options)
    return JSONResponse(translate.tokenize_response(response, body.return_token_strs))


async def detokenize(request: Request) -> Response:
    body = await parse_body(request, DetokenizeRequest)
    stubs, options = stubs_and_options(request, model=body.model)
    with rpc_errors(translate.DETOKENIZE_PARAMS):
        response = await stubs.tokenization.Detokenize(translate.detokenize_request(body), **options)
    return JSONResponse(translate.detokenize_response(response))
