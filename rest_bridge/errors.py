"""The one place where failures become HTTP statuses and OpenAI error envelopes.

Every error the bridge emits is `{"error": {"message", "type", "param", "code"}}`, all four keys
present, `code` a string or null: gRPC statuses from the worker, validation failures and
framework-level failures (malformed JSON, unknown route, wrong method, crashes) alike.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

logger = logging.getLogger("rest_bridge")

_DETAILS_KEY = "grpc-status-details-bin"
# Type of the pydantic errors raised by our own validators: their message is a finished sentence.
CUSTOM_ERROR_TYPE = "invalid_request"


class APIError(Exception):
    """An error answer: HTTP status plus the OpenAI envelope fields."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class ClientGone(Exception):
    """The HTTP client disconnected before its answer was ready; nobody is left to answer."""


# gRPC code → (HTTP status, error type, default code, message when the status has no rich details).
_RPC_MAPPING: dict[grpc.StatusCode, tuple[int, str, str | None, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error", None, "Invalid request."),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error", "model_not_found", "The model does not exist."),
    grpc.StatusCode.FAILED_PRECONDITION: (
        400,
        "invalid_request_error",
        None,
        "The model cannot serve this request.",
    ),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (
        429,
        "rate_limit_error",
        "rate_limit_exceeded",
        "The worker is overloaded; retry later.",
    ),
    grpc.StatusCode.UNAVAILABLE: (503, "server_error", None, "The model worker is unavailable; retry later."),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout", None, "The request timed out."),
}
_INTERNAL = (500, "server_error", None, "The model worker failed to process the request.")
# Answers that tell the client when to try again (Retry-After, in seconds): a full queue, and a
# worker that is down, restarting or loading.
_SAY_WHEN_TO_RETRY = frozenset({429, 503})
# The worker checks only the bridge's own key (--worker-api-key); REST clients' keys are checked
# by the bridge itself (auth.py), so a refusal here is the bridge's misconfiguration.
_CREDENTIALS_REFUSED = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})


def _rich_status(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    for key, value in error.trailing_metadata() or ():
        if key == _DETAILS_KEY:
            return status_pb2.Status.FromString(value)
    return None


def openai_param(field: str, params: Mapping[str, str]) -> str:
    """Maps a proto field path (`sampling.temperature`, `inputs[2]`) to the OpenAI parameter.

    The longest mapped prefix wins and the rest of the path is kept; unknown paths pass unchanged.
    """
    for cut in range(len(field), 0, -1):
        prefix, rest = field[:cut], field[cut:]
        if prefix in params and (not rest or rest[0] in ".["):
            return params[prefix] + rest
    return field


def from_rpc_error(error: grpc.aio.AioRpcError, params: Mapping[str, str]) -> APIError:
    """The HTTP answer to a failed gRPC call; `params` maps proto field paths to OpenAI params."""
    if error.code() in _CREDENTIALS_REFUSED:
        return _worker_refused_bridge(error)
    status, type_, code, fallback = _RPC_MAPPING.get(error.code(), _INTERNAL)
    rich = _rich_status(error)
    if rich is None:
        # Raised by the channel itself (unreachable worker, our own deadline): no worker sentence.
        message = fallback
    else:
        message = rich.message or error.details() or fallback
    param: str | None = None
    retry_after = 1
    for detail in rich.details if rich is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            code = info.reason.lower() or code
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            if bad.field_violations:
                param = openai_param(bad.field_violations[0].field, params)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = max(1, math.ceil(retry.retry_delay.ToTimedelta().total_seconds()))
    headers = {"Retry-After": str(retry_after)} if status in _SAY_WHEN_TO_RETRY else None
    if status == 500:
        logger.error("worker call failed: %s %s", error.code(), error.details())
    return APIError(status, message, type=type_, param=param, code=code, headers=headers)


def _worker_refused_bridge(error: grpc.aio.AioRpcError) -> APIError:
    """A 502, not the 401/403 of the worker: the client is not at fault and must not be told its
    key is wrong. The worker's words (and ErrorInfo code) stay in the bridge's log."""
    logger.error(
        "the model worker refused the bridge's worker API key (%s: %s); check --worker-api-key",
        error.code().name,
        error.details(),
    )
    return APIError(502, "The server could not authenticate to its model worker.", type="server_error")


def not_serving(message: str) -> APIError:
    """A 503 for a worker that is up but not serving (loading, draining), with Retry-After."""
    return APIError(503, message, type="server_error", code="not_ready", headers={"Retry-After": "1"})


def internal_error() -> APIError:
    return APIError(500, "The server had an error while processing your request.", type="server_error")


def from_exception(error: Exception, params: Mapping[str, str]) -> APIError:
    """Like from_rpc_error, for any exception (unexpected ones are logged and become a 500)."""
    if isinstance(error, grpc.aio.AioRpcError):
        return from_rpc_error(error, params)
    if isinstance(error, APIError):
        return error
    logger.error("unexpected error", exc_info=error)
    return internal_error()


@contextmanager
def rpc_errors(params: Mapping[str, str]) -> Iterator[None]:
    """Turns a failed gRPC call inside the block into an APIError."""
    try:
        yield
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error, params) from None


def _loc_param(loc: tuple[int | str, ...]) -> str | None:
    param = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker for an invalid dict key
            continue
        param += f"[{part}]" if isinstance(part, int) else (f".{part}" if param else str(part))
    return param or None


def from_validation_error(error: ValidationError) -> APIError:
    """A 400 naming the first offending parameter, e.g. `temperature` or `messages[0].role`."""
    first = error.errors(include_url=False)[0]
    context = first.get("ctx") or {}
    param = context.get("param") or _loc_param(first["loc"])
    if first["type"] == CUSTOM_ERROR_TYPE:
        message = first["msg"]
    elif first["type"] == "missing":
        message = f"Missing required parameter: '{param}'."
    else:
        message = f"Invalid value for '{param}': {first['msg']}." if param else f"{first['msg']}."
    return APIError(400, message, param=param)


# Starlette exception handlers (registered in app.py).


async def handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return exc.response()


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"Unknown request URL: {request.method} {request.url.path}."
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}."
    else:
        message = exc.detail
    error_type = "server_error" if exc.status_code >= 500 else "invalid_request_error"
    return APIError(exc.status_code, message, type=error_type, headers=exc.headers).response()


async def handle_client_gone(request: Request, exc: Exception) -> Response:
    # 499 (nginx's "client closed request"): written to a closed connection, only seen in logs.
    return Response(status_code=499)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    """Handler of ServerErrorMiddleware, which logs and re-raises after it.

    That middleware is the outermost one, so the request-id header is set here again.
    """
    response = internal_error().response()
    request_id = getattr(request.state, "request_id", None)
    if request_id:
        response.headers["x-request-id"] = request_id
    return response
