"""API keys on the gRPC API: every tokenwire.v1 call needs `authorization: Bearer KEY` metadata.

grpc.health.v1 and server reflection stay open, so load balancers, orchestrators and grpcurl
work without a key. A refused call ends with UNAUTHENTICATED and an ErrorInfo (INVALID_API_KEY).
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from service.errors import Unauthenticated
from service.servicers.request_context import bind_request_id
from service.servicers.status import SERVICE_PREFIX, abort_with_error
from tokenwire.api_keys import bearer_token, key_allowed


def _authorization(details: grpc.HandlerCallDetails) -> str | None:
    for key, value in details.invocation_metadata or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None


def _refusing(handler: grpc.RpcMethodHandler, error: Unauthenticated) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that only ends the call with `error`."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        bind_request_id(context, request)
        await abort_with_error(context, error)

    codec = dict(
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(refuse, **codec)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse, **codec)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse, **codec)
    return grpc.stream_stream_rpc_method_handler(refuse, **codec)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Refuses tokenwire.v1 calls whose metadata carries none of `keys` (constant-time checks)."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._keys = tuple(keys)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(SERVICE_PREFIX):
            return handler
        token = bearer_token(_authorization(details))
        if key_allowed(token, self._keys):
            return handler
        if token is None:
            error = Unauthenticated("Missing API key: send `authorization: Bearer KEY` metadata.")
        else:
            error = Unauthenticated("Invalid API key.")
        return _refusing(handler, error)
