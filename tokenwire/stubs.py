"""Every service stub of a tokenwire worker, bound to one channel (grpc or grpc.aio)."""
from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2_grpc

from tokenwire.v1 import embedding_pb2_grpc, generation_pb2_grpc, models_pb2_grpc, tokenization_pb2_grpc


@dataclass(frozen=True)
class WorkerStubs:
    generation: generation_pb2_grpc.GenerationStub
    embedding: embedding_pb2_grpc.EmbeddingStub
    tokenization: tokenization_pb2_grpc.TokenizationStub
    models: models_pb2_grpc.ModelsStub
    health: health_pb2_grpc.HealthStub

    @classmethod
    def on(cls, channel: grpc.Channel | grpc.aio.Channel) -> WorkerStubs:
        return cls(
            generation=generation_pb2_grpc.GenerationStub(channel),
            embedding=embedding_pb2_grpc.EmbeddingStub(channel),
            tokenization=tokenization_pb2_grpc.TokenizationStub(channel),
            models=models_pb2_grpc.ModelsStub(channel),
            health=health_pb2_grpc.HealthStub(channel),
        )
