"""Per-call metadata the servicers read."""
from __future__ import annotations

import uuid

import grpc


def request_id(context: grpc.aio.ServicerContext, from_body: str = "") -> str:
    """The request body's id, else the `x-request-id` metadata, else a fresh one."""
    if from_body:
        return from_body
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and value:
            return str(value)
    return uuid.uuid4().hex
