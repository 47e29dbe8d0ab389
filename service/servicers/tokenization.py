"""tokenwire.v1.Tokenization: text or chat → token ids, and back.

Megabytes of text take seconds to tokenize or detokenize, so that work runs off the event loop
(health checks and other calls go on meanwhile).
"""
from __future__ import annotations

import asyncio

import grpc

from service.errors import InvalidRequest
from service.models.registry import ModelRegistry, ServedModel
from service.servicers.prompt_input import add_generation_prompt, chat_messages, check_token_ids
from service.structured.plan import parse_tools
from service.text.chat import render_chat
from service.text.encoding import encode_text
from tokenwire.v1 import tokenization_pb2, tokenization_pb2_grpc


def _tokenize(request: tokenization_pb2.TokenizeRequest, model: ServedModel) -> tokenization_pb2.TokenizeResponse:
    tokenizer = model.tokenizer
    response = tokenization_pb2.TokenizeResponse(context_length=model.card.context_length)
    kind = request.WhichOneof("input")
    if request.tools and kind != "chat":
        raise InvalidRequest("Tools need chat input.", field="tools")
    if kind == "chat":
        tools = [tool.prompt for tool in parse_tools(request.tools)] or None
        messages = chat_messages(request.chat)
        response.rendered_prompt = render_chat(tokenizer, messages, add_generation_prompt(request.chat), tools)
        ids = encode_text(tokenizer, response.rendered_prompt, add_special_tokens=False)
    elif kind == "text":
        add_special = request.add_special_tokens if request.HasField("add_special_tokens") else True
        ids = encode_text(tokenizer, request.text, add_special_tokens=add_special)
    else:
        raise InvalidRequest("Set `text` or `chat`.", field="input")
    response.token_ids.extend(ids)
    if request.return_tokens:
        response.tokens.extend(tokenizer.convert_ids_to_tokens(ids))
    return response


def _detokenize(request: tokenization_pb2.DetokenizeRequest, model: ServedModel) -> tokenization_pb2.DetokenizeResponse:
    ids = list(request.token_ids)
    if ids:
        check_token_ids(ids, len(model.tokenizer), "token_ids")
    skip = request.skip_special_tokens if request.HasField("skip_special_tokens") else False
    return tokenization_pb2.DetokenizeResponse(text=model.tokenizer.decode(ids, skip_special_tokens=skip))


class TokenizationServicer(tokenization_pb2_grpc.TokenizationServicer):
    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    def _model(self, address: str) -> ServedModel:
        return self._registry.find(address) if address else self._registry.generation("")

    async def Tokenize(
        self, request: tokenization_pb2.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> tokenization_pb2.TokenizeResponse:
        return await asyncio.to_thread(_tokenize, request, self._model(request.model))

    async def Detokenize(
        self, request: tokenization_pb2.DetokenizeRequest, context: grpc.aio.ServicerContext
    ) -> tokenization_pb2.DetokenizeResponse:
        return await asyncio.to_thread(_detokenize, request, self._model(request.model))
