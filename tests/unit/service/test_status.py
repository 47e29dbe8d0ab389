"""The error-mapping interceptor on an in-process grpc.aio server: statuses, request ids, logs."""
from __future__ import annotations

import logging
import re

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from service.api_server import ApiServicers, api_server
from service.models.registry import ModelRegistry
from service.servicers.models import ModelsServicer
from service.servicers.status import ErrorMappingInterceptor
from tests.in_process import listening
from tokenwire.v1 import models_pb2, models_pb2_grpc


class _BrokenGetModel(ModelsServicer):
    async def GetModel(self, request, context):
        raise RuntimeError("boom")


@pytest.fixture
async def models():
    """The Models service of a worker still loading (an empty registry), whose GetModel fails."""
    server, _ = api_server(ApiServicers(models=_BrokenGetModel(ModelRegistry())), [ErrorMappingInterceptor()])
    async with listening(server) as address, grpc.aio.insecure_channel(address) as channel:
        yield models_pb2_grpc.ModelsStub(channel)


def _reason(error: grpc.aio.AioRpcError) -> str:
    info = error_details_pb2.ErrorInfo()
    next(d for d in rpc_status.from_call(error).details if d.Is(info.DESCRIPTOR)).Unpack(info)
    return info.reason


def _echoed_id(error: grpc.aio.AioRpcError) -> str:
    return dict(error.trailing_metadata())["x-request-id"]


async def test_list_models_while_loading_is_unavailable_not_ready(models):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await models.ListModels(models_pb2.ListModelsRequest(), metadata=[("x-request-id", "list-1")])
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and _reason(caught.value) == "NOT_READY"
    assert _echoed_id(caught.value) == "list-1"


async def test_unexpected_error_is_internal_and_logged_with_the_request_id(models, caplog):
    with caplog.at_level(logging.ERROR, logger="service.servicers.status"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await models.GetModel(models_pb2.GetModelRequest(id="x"), metadata=[("x-request-id", "req-42")])
    assert caught.value.code() == grpc.StatusCode.INTERNAL and "boom" not in caught.value.details()
    assert _echoed_id(caught.value) == "req-42"
    [record] = [r for r in caplog.records if r.exc_info]
    assert "req-42" in record.getMessage() and "boom" in str(record.exc_info[1])


@pytest.mark.parametrize("given", [None, "has space", "x" * 129])
async def test_a_missing_or_unusable_request_id_is_replaced_by_a_fresh_one(models, given):
    metadata = [] if given is None else [("x-request-id", given)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await models.ListModels(models_pb2.ListModelsRequest(), metadata=metadata)
    assert re.fullmatch("[0-9a-f]{32}", _echoed_id(caught.value))
