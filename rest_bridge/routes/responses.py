"""POST /v1/responses (streamed or not), GET and DELETE /v1/responses/{id}, and
GET /v1/responses/{id}/input_items."""
from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rest_bridge.responses import service
from rest_bridge.responses.conversation import RESPONSE_PARAMS
from rest_bridge.responses.schemas import ResponseCreateRequest
from rest_bridge.routes.common import (
    admitted_streams,
    app_store,
    parse_body,
    request_id,
    stored,
    until_ready,
    worker_calls,
)
from rest_bridge.routes.listing import list_page, page_query
from rest_bridge.sse import EventStreamResponse
from rest_bridge.store import Page, StoredResponse


async def create_response(request: Request) -> Response:
    body = await parse_body(request, ResponseCreateRequest)
    store, worker = app_store(request), worker_calls(request, body.model)
    prepared = await service.prepare(store, body, request_id(request))
    if not body.stream:
        return JSONResponse(await until_ready(request, [], service.respond(worker, store, prepared)))
    streams, infos = await admitted_streams(request, worker, [prepared.chat], RESPONSE_PARAMS)
    return EventStreamResponse(service.stream_events(store, prepared, streams, body.model or infos[0].model))


async def _stored(request: Request) -> StoredResponse:
    return await stored(request, "response_id", app_store(request).get_response, service.not_found)


async def retrieve_response(request: Request) -> Response:
    return JSONResponse((await _stored(request)).response)


async def delete_response(request: Request) -> Response:
    response_id = request.path_params["response_id"]
    if not await asyncio.to_thread(app_store(request).delete_response, response_id):
        raise service.not_found(response_id)
    return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})


async def list_input_items(request: Request) -> Response:
    """The response's own input items (OpenAI's order: newest first unless order=asc)."""
    query = page_query(request, default_limit=20, max_limit=100)
    items = (await _stored(request)).input_items
    ordered = items if query.order == "asc" else items[::-1]
    ids = [item["id"] for item in ordered]
    start = ids.index(query.after) + 1 if query.after in ids else 0
    window = ordered[start : start + query.limit]
    return JSONResponse(list_page(Page(window, has_more=start + query.limit < len(ordered))))
