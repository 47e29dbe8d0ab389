"""gRPC status → HTTP status + OpenAI envelope, on real AioRpcError objects with rich details."""
from __future__ import annotations

import json
import logging

import grpc
import pytest
from rest_bridge import translate
from rest_bridge.errors import APIError, from_exception, from_rpc_error, rpc_errors
from service.errors import (
    ContextLengthExceeded,
    InvalidRequest,
    ModelNotFound,
    QueueFull,
    TokenwireError,
    Unauthenticated,
    WrongModelKind,
)
from service.servicers.status import rich_status


def rpc_error(code: grpc.StatusCode, message: str) -> grpc.aio.AioRpcError:
    """A status without rich details, as grpc itself or a proxy may raise it."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=message)


def worker_error(error: TokenwireError) -> grpc.aio.AioRpcError:
    """The status the worker sends for `error`, encoded by the worker's own code."""
    code, status = rich_status(error)
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=status.message)


def envelope(error: APIError) -> dict[str, object]:
    response = error.response()
    body = json.loads(response.body)
    assert list(body) == ["error"] and list(body["error"]) == ["message", "type", "param", "code"]
    return body["error"]


def test_context_length_exceeded() -> None:
    message = "This model's maximum context length is 2048 tokens, but the prompt has 3000."
    error = from_rpc_error(
        worker_error(ContextLengthExceeded(message, field="prompt")),
        translate.CHAT_PARAMS,
    )
    assert error.status == 400
    assert envelope(error) == {
        "message": message,
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }


def test_invalid_parameter_names_the_openai_param() -> None:
    error = from_rpc_error(
        worker_error(InvalidRequest("max_new_tokens is too large.", field="stopping.max_new_tokens")),
        translate.COMPLETION_PARAMS,
    )
    assert (error.status, error.param, error.code) == (400, "max_tokens", "invalid_parameter")


def test_model_not_found() -> None:
    error = from_rpc_error(
        worker_error(ModelNotFound("The model 'x' does not exist.", field="model")),
        translate.CHAT_PARAMS,
    )
    assert envelope(error) == {
        "message": "The model 'x' does not exist.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    assert error.status == 404
    # Without details the code is still model_not_found.
    assert from_rpc_error(rpc_error(grpc.StatusCode.NOT_FOUND, "gone"), {}).code == "model_not_found"


def test_wrong_model_kind_is_a_400() -> None:
    error = from_rpc_error(
        worker_error(WrongModelKind("That is an embedding model.")),
        translate.CHAT_PARAMS,
    )
    assert (error.status, error.type, error.param) == (400, "invalid_request_error", None)
    assert error.code == "wrong_model_kind"


@pytest.mark.parametrize(("seconds", "header"), [(2.5, "3"), (0.2, "1"), (0, "1")])
def test_queue_full_is_a_429_with_retry_after(seconds: float, header: str) -> None:
    error = from_rpc_error(worker_error(QueueFull("The queue is full.", retry_after_s=seconds)), {})
    response = error.response()
    assert response.status_code == 429
    assert response.headers["retry-after"] == header
    assert envelope(error)["code"] == "queue_full"


def test_resource_exhausted_without_retry_info_still_has_retry_after() -> None:
    error = from_rpc_error(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "Too many streams."), {})
    assert error.response().headers["retry-after"] == "1"
    assert envelope(error)["code"] == "rate_limit_exceeded"


def test_unavailable_worker_is_a_503_with_retry_after() -> None:
    # Raised by the channel itself while the worker is down or restarting: no details.
    error = from_rpc_error(rpc_error(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses"), {})
    response = error.response()
    assert (response.status_code, error.type) == (503, "server_error")
    assert response.headers["retry-after"] == "1"


@pytest.mark.parametrize(
    ("code", "status", "error_type"),
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504, "timeout"),
        (grpc.StatusCode.INTERNAL, 500, "server_error"),
        (grpc.StatusCode.UNKNOWN, 500, "server_error"),
        (grpc.StatusCode.ABORTED, 500, "server_error"),
    ],
)
def test_status_table(code: grpc.StatusCode, status: int, error_type: str) -> None:
    error = from_rpc_error(rpc_error(code, "Something happened."), {})
    assert (error.status, error.type) == (status, error_type) and envelope(error)["message"]
    assert "retry-after" not in error.response().headers


@pytest.mark.parametrize(
    "error",
    [
        worker_error(Unauthenticated("Invalid API key.")),
        rpc_error(grpc.StatusCode.PERMISSION_DENIED, "Permission denied."),
    ],
)
def test_the_worker_refusing_the_bridges_key_is_a_502_not_a_client_401(
    error: grpc.aio.AioRpcError, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="rest_bridge"):
        api_error = from_rpc_error(error, {})
    assert (api_error.status, api_error.type, api_error.code) == (502, "server_error", None)
    assert "API key" not in envelope(api_error)["message"]
    assert "www-authenticate" not in api_error.response().headers
    assert "refused the bridge's worker API key" in caplog.text


def test_channel_errors_without_details_get_a_readable_message() -> None:
    # What grpc raises itself when the worker cannot be reached: no rich status, a technical text.
    raw = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
        details="failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1",
    )
    error = from_rpc_error(raw, {})
    assert error.status == 503
    assert "127.0.0.1" not in error.message and "unavailable" in error.message
    assert envelope(error)["code"] is None


def test_rpc_errors_block_and_unexpected_exceptions() -> None:
    with pytest.raises(APIError) as caught, rpc_errors(translate.EMBEDDING_PARAMS):
        raise worker_error(InvalidRequest("Empty input.", field="inputs[0]"))
    assert caught.value.param == "input[0]"
    crash = from_exception(RuntimeError("boom"), {})
    assert (crash.status, crash.type) == (500, "server_error") and "boom" not in crash.message
