"""API keys on the gRPC API: every tokenwire.v1 call needs `authorization: Bearer KEY` metadata.

grpc.health.v1 and server reflection stay open, so load balancers, orchestrators and grpcurl
work without a key. A refused call ends with UNAUTHENTICATED and an ErrorInfo (INVALID_API_KEY).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from service.errors import Unauthenticated
from service.servicers.interception import ApiInterceptor, replace_behavior
from service.servicers.request_context import bind_request_id
from service.servicers.status import abort_with_error
from tokenwire.api_keys import bearer_token, key_allowed


def _authorization(details: grpc.HandlerCallDetails) -> str | None:
    for key, value in details.invocation_metadata or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None


class ApiKeyInterceptor(ApiInterceptor):
    """Refuses tokenwire.v1 calls whose metadata carries none of `keys` (constant-time checks)."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._keys = tuple(keys)

    def wrap(self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        token = bearer_token(_authorization(details))
        if key_allowed(token, self._keys):
            return handler
        if token is None:
            error = Unauthenticated("Missing API key: send `authorization: Bearer KEY` metadata.")
        else:
            error = Unauthenticated("Invalid API key.")

        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
            bind_request_id(context, request)
            await abort_with_error(context, error)

        return replace_behavior(handler, lambda kind, behavior: refuse)
