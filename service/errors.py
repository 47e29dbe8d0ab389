"""Typed errors of the worker. Raised where they arise, mapped to gRPC statuses in one place
(service/servicers/status.py). Plain Python: the engine and the model registry use them without
importing gRPC."""
from __future__ import annotations


class TokenwireError(Exception):
    """Base of every error a client is meant to see. `reason` is an UPPER_SNAKE_CASE code."""

    reason = "INTERNAL"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        # The request field at fault, as a proto field path ("sampling.temperature").
        self.field = field


class InvalidRequest(TokenwireError):
    reason = "INVALID_PARAMETER"


class ContextLengthExceeded(InvalidRequest):
    reason = "CONTEXT_LENGTH_EXCEEDED"


class KvCacheExceeded(ContextLengthExceeded):
    """The request needs more tokens than the worker's KV cache holds for one sequence."""


class ModelNotFound(TokenwireError):
    reason = "MODEL_NOT_FOUND"


class WrongModelKind(TokenwireError):
    """A valid request this model cannot serve (embed on a generation model, chat without template)."""

    reason = "WRONG_MODEL_KIND"


class QueueFull(TokenwireError):
    reason = "QUEUE_FULL"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotReady(TokenwireError):
    """Loading, draining, or the engine is dead."""

    reason = "NOT_READY"


class Unauthenticated(TokenwireError):
    """Missing or wrong API key."""

    reason = "INVALID_API_KEY"
