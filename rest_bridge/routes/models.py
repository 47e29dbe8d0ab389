"""GET /v1/models and GET /v1/models/{model_id} (ids contain slashes, versions and deploy ids)."""
from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rest_bridge import translate
from rest_bridge.errors import rpc_errors
from rest_bridge.routes.common import stubs_and_options
from rest_bridge.upstream import Upstream, Upstreams
from tokenwire.v1 import models_pb2

logger = logging.getLogger("rest_bridge")


async def _served_models(request: Request, upstream: Upstream) -> list[models_pb2.ModelInfo]:
    """The models whose requests go to `upstream`, among those it serves."""
    stubs, options = stubs_and_options(request, metadata_call=True, upstream=upstream)
    response = await stubs.models.ListModels(models_pb2.ListModelsRequest(), **options)
    upstreams: Upstreams = request.app.state.upstreams
    return [info for info in response.models if upstreams.for_model(info.id) is upstream]


async def list_models(request: Request) -> Response:
    """The models of every worker address that answers; an error only when none does."""
    upstreams: Upstreams = request.app.state.upstreams
    answers = await asyncio.gather(
        *(_served_models(request, upstream) for upstream in upstreams.all), return_exceptions=True
    )
    served = [answer for answer in answers if not isinstance(answer, BaseException)]
    for upstream, answer in zip(upstreams.all, answers):
        if isinstance(answer, BaseException) and served:
            logger.warning("/v1/models leaves out the models of %s: %r", upstream.address, answer)
    if not served:
        with rpc_errors(translate.MODELS_PARAMS):
            raise next(answer for answer in answers if isinstance(answer, BaseException))
    merged = models_pb2.ListModelsResponse(models=[info for models in served for info in models])
    return JSONResponse(translate.models_list(merged))


async def retrieve_model(request: Request) -> Response:
    model_id = request.path_params["model_id"]
    stubs, options = stubs_and_options(request, metadata_call=True, model=model_id)
    with rpc_errors(translate.MODELS_PARAMS):
        info = await stubs.models.GetModel(models_pb2.GetModelRequest(id=model_id), **options)
    return JSONResponse(translate.model_card(info))
