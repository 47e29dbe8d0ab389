"""GET /health: the grpc.health.v1 status ("", the whole server) of every worker address the
bridge calls, and whether each takes the bridge's key. A 200 only when all of them serve."""
from __future__ import annotations

import asyncio

from grpc_health.v1 import health_pb2
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rest_bridge.errors import not_serving, rpc_errors
from rest_bridge.routes.common import stubs_and_options
from rest_bridge.upstream import Upstream, Upstreams
from tokenwire.v1 import models_pb2


async def _check(request: Request, upstream: Upstream, named: bool) -> None:
    stubs, options = stubs_and_options(request, metadata_call=True, upstream=upstream)
    worker = f"The model worker at {upstream.address}" if named else "The model worker"
    with rpc_errors({}):
        response = await stubs.health.Check(health_pb2.HealthCheckRequest(service=""), **options)
        if response.status != health_pb2.HealthCheckResponse.SERVING:
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            raise not_serving(f"{worker} is not serving ({status}).")
        # grpc.health.v1 needs no key: this cheap call of the worker's own API proves that the
        # worker takes the bridge's key (a refused one is the 502 every API call would get).
        await stubs.models.ListModels(models_pb2.ListModelsRequest(), **options)


async def health(request: Request) -> Response:
    upstreams: Upstreams = request.app.state.upstreams
    named = len(upstreams.all) > 1
    await asyncio.gather(*(_check(request, upstream, named) for upstream in upstreams.all))
    return JSONResponse({"status": "ok"})
