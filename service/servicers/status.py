"""The one place where worker errors become gRPC statuses with google.rpc rich details.

An interceptor wraps every tokenwire.v1 handler, so servicers simply raise TokenwireError. It
also binds the call's request id (request_context.py) before the servicer runs.
"""
from __future__ import annotations

import inspect
import logging
import math
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from service.errors import (
    InvalidRequest,
    ModelNotFound,
    NotReady,
    QueueFull,
    TokenwireError,
    Unauthenticated,
    WrongModelKind,
)
from service.servicers.interception import ApiInterceptor, Behavior, HandlerKind, replace_behavior
from service.servicers.request_context import bind_request_id, request_id

log = logging.getLogger(__name__)

ERROR_DOMAIN = "tokenwire.v1"

_CODES: dict[type[TokenwireError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,  # ContextLengthExceeded too
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    WrongModelKind: grpc.StatusCode.FAILED_PRECONDITION,
    QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NotReady: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
}


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def rich_status(error: TokenwireError) -> tuple[grpc.StatusCode, status_pb2.Status]:
    code = next((c for cls, c in _CODES.items() if isinstance(error, cls)), grpc.StatusCode.INTERNAL)
    details = [_pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN))]
    if error.field:
        violation = error_details_pb2.BadRequest.FieldViolation(field=error.field, description=error.message)
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    if isinstance(error, QueueFull):
        delay = duration_pb2.Duration(seconds=max(1, math.ceil(error.retry_after_s)))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return code, status_pb2.Status(code=code.value[0], message=error.message, details=details)


async def abort_with_error(context: grpc.aio.ServicerContext, error: Exception) -> None:
    """Ends the call with `error`'s status and rich details, and the call's x-request-id when one
    is bound (unexpected errors: INTERNAL, logged with the request id)."""
    call_id = request_id()
    if not isinstance(error, TokenwireError):
        log.exception("unexpected error in request %r", call_id, exc_info=error)
        error = TokenwireError("Internal error while serving the request.")
    code, status = rich_status(error)
    metadata = [("grpc-status-details-bin", status.SerializeToString())]
    if call_id:
        metadata.append(("x-request-id", call_id))
    await context.abort(code, status.message, trailing_metadata=tuple(metadata))


def _wrap_unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        bind_request_id(context, request)
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await abort_with_error(context, error)

    return handler


def _wrap_stream(behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        bind_request_id(context, request)
        try:
            async for message in behavior(request, context):
                yield message
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await abort_with_error(context, error)

    return handler


def _with_error_mapping(kind: HandlerKind, behavior: Behavior) -> Behavior | None:
    if kind == "unary_unary":
        return _wrap_unary(behavior)
    if kind == "unary_stream" and inspect.isasyncgenfunction(behavior):
        return _wrap_stream(behavior)
    return None


class ErrorMappingInterceptor(ApiInterceptor):
    def wrap(self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return replace_behavior(handler, _with_error_mapping)
