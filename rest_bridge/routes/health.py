"""GET /health: the worker's grpc.health.v1 status for the whole server ("")."""
from __future__ import annotations

from grpc_health.v1 import health_pb2
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rest_bridge.errors import APIError, rpc_errors
from rest_bridge.routes.common import stubs_and_options

# A health probe must answer quickly, whatever the generation deadline is.
_HEALTH_TIMEOUT_S = 5.0


async def health(request: Request) -> Response:
    stubs, options = stubs_and_options(request)
    options["timeout"] = min(options["timeout"] or _HEALTH_TIMEOUT_S, _HEALTH_TIMEOUT_S)
    with rpc_errors({}):
        response = await stubs.health.Check(health_pb2.HealthCheckRequest(service=""), **options)
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        raise APIError(503, f"The model worker is not serving ({status}).", type="server_error", code="not_ready")
    return JSONResponse({"status": "ok"})
