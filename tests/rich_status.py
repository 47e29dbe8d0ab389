"""A failed gRPC call's google.rpc details (ErrorInfo, BadRequest, RetryInfo), read in tests."""
from __future__ import annotations

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

_KINDS = (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo)


def details(error: grpc.RpcError) -> dict[str, Message]:
    """The error's details, by message name ("ErrorInfo", "BadRequest", "RetryInfo")."""
    found: dict[str, Message] = {}
    for detail in rpc_status.from_call(error).details:
        for kind in _KINDS:
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found[kind.__name__] = message
    return found


def reason(error: grpc.RpcError) -> str:
    """The ErrorInfo reason (QUEUE_FULL, INVALID_API_KEY…)."""
    return details(error)["ErrorInfo"].reason


def violated_fields(error: grpc.RpcError) -> list[str]:
    """The request fields the BadRequest detail names."""
    return [violation.field for violation in details(error)["BadRequest"].field_violations]
