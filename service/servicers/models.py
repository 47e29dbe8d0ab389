"""tokenwire.v1.Models: what is served, and how to address it."""
from __future__ import annotations

import grpc

from service.models.registry import ModelCard, ModelKind, ModelRegistry
from tokenwire.v1 import models_pb2, models_pb2_grpc

_KINDS = {ModelKind.GENERATION: models_pb2.MODEL_KIND_GENERATION, ModelKind.EMBEDDING: models_pb2.MODEL_KIND_EMBEDDING}


def model_info(card: ModelCard) -> models_pb2.ModelInfo:
    info = models_pb2.ModelInfo(
        id=card.model_id,
        kind=_KINDS[card.kind],
        version=card.version,
        deploy_id=card.deploy_id,
        created=card.created,
        owned_by=card.owned_by,
        context_length=card.context_length,
        has_chat_template=card.has_chat_template,
        eos_token_ids=card.eos_token_ids,
        embedding_dimension=card.embedding_dimension,
        prices=models_pb2.Prices(
            input_per_million=card.price_input_per_million, output_per_million=card.price_output_per_million
        ),
        device=card.device,
        dtype=card.dtype,
        kernels=card.kernels,
    )
    if card.kv_cache is not None:
        info.kv_cache.CopyFrom(models_pb2.KvCacheInfo(
            block_size=card.kv_cache.block_size,
            blocks=card.kv_cache.blocks,
            tokens=card.kv_cache.tokens,
            prefix_caching=card.kv_cache.prefix_caching,
            bytes_per_token=card.kv_cache.bytes_per_token,
        ))
    return info


class ModelsServicer(models_pb2_grpc.ModelsServicer):
    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    async def ListModels(
        self, request: models_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.ListModelsResponse:
        return models_pb2.ListModelsResponse(models=[model_info(m.card) for m in self._registry.served()])

    async def GetModel(
        self, request: models_pb2.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.ModelInfo:
        return model_info(self._registry.find(request.id).card)
