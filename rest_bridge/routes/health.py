"""GET /health: the worker's grpc.health.v1 status for the whole server (""), and whether the
worker takes the bridge's key."""
from __future__ import annotations

from grpc_health.v1 import health_pb2
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rest_bridge.errors import not_serving, rpc_errors
from rest_bridge.routes.common import stubs_and_options
from rest_bridge.upstream import METADATA_TIMEOUT_S
from tokenwire.v1 import models_pb2


async def health(request: Request) -> Response:
    stubs, options = stubs_and_options(request, METADATA_TIMEOUT_S)
    with rpc_errors({}):
        response = await stubs.health.Check(health_pb2.HealthCheckRequest(service=""), **options)
        if response.status != health_pb2.HealthCheckResponse.SERVING:
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            raise not_serving(f"The model worker is not serving ({status}).")
        # grpc.health.v1 needs no key: this cheap call of the worker's own API proves that the
        # worker takes the bridge's key (a refused one is the 502 every API call would get).
        await stubs.models.ListModels(models_pb2.ListModelsRequest(), **options)
    return JSONResponse({"status": "ok"})
