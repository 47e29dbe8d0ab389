"""Per-call metadata: the request id the servicers and logs use, and the trailing metadata."""
from __future__ import annotations

import uuid
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

import grpc

from tokenwire.limits import REQUEST_ID_PATTERN

# Bound per call by the error-mapping interceptor; each call runs in its own asyncio task, whose
# context the servicer (and the threads it starts with asyncio.to_thread) shares.
_REQUEST_ID: ContextVar[str] = ContextVar("tokenwire_request_id")


def bind_request_id(context: grpc.aio.ServicerContext, request: Any) -> None:
    """Resolves the call's id once: the request body's `request_id`, else the `x-request-id`
    metadata, else a fresh one (also when the id given is not 1 to 128 visible ASCII characters)."""
    given = [getattr(request, "request_id", "")]
    given.extend(str(value) for key, value in context.invocation_metadata() or () if key == "x-request-id")
    _REQUEST_ID.set(next((value for value in given if REQUEST_ID_PATTERN.fullmatch(value)), uuid.uuid4().hex))


def request_id() -> str:
    """The current call's id (see bind_request_id); empty outside a bound call."""
    return _REQUEST_ID.get("")


def set_trailing_metadata(
    context: grpc.aio.ServicerContext,
    timings: Mapping[str, float | None],
    counts: Mapping[str, int | None] | None = None,
) -> None:
    """Ends the call with `x-request-id`, each timing that applies (durations in seconds, sent in
    milliseconds with one decimal: {"x-queue-time-ms": 0.0123} → "12.3") and each count."""
    metadata = [("x-request-id", request_id())]
    metadata.extend((key, f"{seconds * 1000:.1f}") for key, seconds in timings.items() if seconds is not None)
    metadata.extend((key, str(count)) for key, count in (counts or {}).items() if count is not None)
    context.set_trailing_metadata(tuple(metadata))
