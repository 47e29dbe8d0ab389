"""GET /v1/models and GET /v1/models/{model_id} (ids contain slashes, versions and deploy ids)."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rest_bridge import translate
from rest_bridge.errors import rpc_errors
from rest_bridge.routes.common import stubs_and_options
from rest_bridge.upstream import METADATA_TIMEOUT_S
from tokenwire.v1 import models_pb2


async def list_models(request: Request) -> Response:
    stubs, options = stubs_and_options(request, METADATA_TIMEOUT_S)
    with rpc_errors(translate.MODELS_PARAMS):
        response = await stubs.models.ListModels(models_pb2.ListModelsRequest(), **options)
    return JSONResponse(translate.models_list(response))


async def retrieve_model(request: Request) -> Response:
    stubs, options = stubs_and_options(request, METADATA_TIMEOUT_S)
    with rpc_errors(translate.MODELS_PARAMS):
        lookup = models_pb2.GetModelRequest(id=request.path_params["model_id"])
        info = await stubs.models.GetModel(lookup, **options)
    return JSONResponse(translate.model_card(info))
