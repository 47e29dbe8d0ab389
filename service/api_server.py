"""A grpc.aio server carrying the tokenwire.v1 services and grpc.health.v1, with the worker's
options: the worker's own server, and the tests' stand-ins for a worker."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from tokenwire.limits import MAX_MESSAGE_BYTES
from tokenwire.v1 import embedding_pb2_grpc, generation_pb2_grpc, models_pb2_grpc, tokenization_pb2_grpc

SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    # A second worker on a port already served fails to start instead of sharing the port.
    ("grpc.so_reuseport", 0),
]


@dataclass(frozen=True)
class ApiServicers:
    """The servicers of the tokenwire.v1 services; a stand-in may leave some out."""

    generation: generation_pb2_grpc.GenerationServicer | None = None
    embedding: embedding_pb2_grpc.EmbeddingServicer | None = None
    tokenization: tokenization_pb2_grpc.TokenizationServicer | None = None
    models: models_pb2_grpc.ModelsServicer | None = None


def api_server(
    servicers: ApiServicers, interceptors: Sequence[grpc.aio.ServerInterceptor] = ()
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """A server with `servicers` and grpc.health.v1 (whose servicer sets the statuses)."""
    server = grpc.aio.server(interceptors=list(interceptors), options=SERVER_OPTIONS)
    for add, servicer in (
        (generation_pb2_grpc.add_GenerationServicer_to_server, servicers.generation),
        (embedding_pb2_grpc.add_EmbeddingServicer_to_server, servicers.embedding),
        (tokenization_pb2_grpc.add_TokenizationServicer_to_server, servicers.tokenization),
        (models_pb2_grpc.add_ModelsServicer_to_server, servicers.models),
    ):
        if servicer is not None:
            add(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    return server, health_servicer
