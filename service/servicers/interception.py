"""What the worker's server interceptors share: they see the tokenwire.v1 methods only (health and
reflection pass untouched), and they replace a method's behaviour keeping its kind and codec."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

import grpc

SERVICE_PREFIX = "/tokenwire.v1."

Behavior = Callable[..., Any]
HandlerKind = Literal["unary_unary", "unary_stream", "stream_unary", "stream_stream"]

_HANDLER_FACTORIES: dict[HandlerKind, Callable[..., grpc.RpcMethodHandler]] = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def replace_behavior(
    handler: grpc.RpcMethodHandler, replace: Callable[[HandlerKind, Behavior], Behavior | None]
) -> grpc.RpcMethodHandler:
    """A handler of `handler`'s kind and codec whose behaviour is `replace(kind, behaviour)`;
    `handler` itself where that is None."""
    for kind, factory in _HANDLER_FACTORIES.items():
        behavior = getattr(handler, kind)
        if behavior is not None:
            replaced = replace(kind, behavior)
            if replaced is None:
                return handler
            return factory(
                replaced,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler


class ApiInterceptor(grpc.aio.ServerInterceptor):
    """A server interceptor whose `wrap` sees the handler of every tokenwire.v1 call."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(SERVICE_PREFIX):
            return handler
        return self.wrap(handler, details)

    def wrap(self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        raise NotImplementedError
