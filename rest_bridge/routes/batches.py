"""OpenAI's Batch API: POST /v1/batches, GET /v1/batches/{id}, GET /v1/batches and
POST /v1/batches/{id}/cancel. The batch runner (batches/runner.py) does the work."""
from __future__ import annotations

import asyncio
import time

from pydantic import field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rest_bridge.batches.endpoints import ENDPOINTS
from rest_bridge.batches.objects import COMPLETION_WINDOW, new_batch
from rest_bridge.batches.runner import BatchRunner
from rest_bridge.errors import APIError
from rest_bridge.routes import files
from rest_bridge.routes.common import app_store, parse_body, stored
from rest_bridge.routes.listing import list_page, page_query
from rest_bridge.schemas import Metadata, _Body, request_error
from rest_bridge.store import Json, Page, Store

# Statuses in which the runner keeps results that GET adds up.
_COUNTING = ("in_progress", "finalizing", "cancelling")
_CANCELLABLE = ("validating", "in_progress")


class BatchCreateRequest(_Body):
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: Metadata | None = None

    @field_validator("endpoint")
    @classmethod
    def _served(cls, value: str) -> str:
        if value not in ENDPOINTS:
            raise request_error(
                f"Batches of {value!r} are not supported; the endpoint must be one of {', '.join(ENDPOINTS)}.",
                "endpoint",
            )
        return value

    @field_validator("completion_window")
    @classmethod
    def _window(cls, value: str) -> str:
        if value != COMPLETION_WINDOW:
            raise request_error(f"The completion_window must be {COMPLETION_WINDOW!r}.", "completion_window")
        return value


def _runner(request: Request) -> BatchRunner:
    return request.app.state.batch_runner


def not_found(batch_id: str) -> APIError:
    return APIError(404, f"No batch found with id '{batch_id}'.", param="batch_id")


async def _view(store: Store, batch: Json) -> Json:
    """The batch as clients see it: while it runs, with its counts so far."""
    if batch["status"] not in _COUNTING:
        return batch
    completed, failed = await asyncio.to_thread(store.result_counts, batch["id"])
    return {**batch, "request_counts": {**batch["request_counts"], "completed": completed, "failed": failed}}


async def create_batch(request: Request) -> Response:
    body = await parse_body(request, BatchCreateRequest)
    store = app_store(request)
    input_file = await asyncio.to_thread(store.get_file, body.input_file_id)
    if input_file is None:
        raise files.not_found(body.input_file_id)
    if input_file["purpose"] != "batch":
        raise APIError(
            400, f"The file {body.input_file_id} was not uploaded with purpose 'batch'.", param="input_file_id"
        )
    batch = new_batch(body.input_file_id, body.endpoint, body.metadata, int(time.time()))
    await asyncio.to_thread(store.add_batch, batch)
    _runner(request).run(batch["id"])
    return JSONResponse(batch)


async def _batch(request: Request) -> Json:
    return await stored(request, "batch_id", app_store(request).get_batch, not_found)


async def retrieve_batch(request: Request) -> Response:
    return JSONResponse(await _view(app_store(request), await _batch(request)))


async def list_batches(request: Request) -> Response:
    query = page_query(request, default_limit=20, max_limit=100)
    store = app_store(request)
    page = await asyncio.to_thread(store.list_batches, query.after, query.limit)
    items = [await _view(store, batch) for batch in page.items]
    return JSONResponse(list_page(Page(items, page.has_more)))


async def cancel_batch(request: Request) -> Response:
    """Moves a running batch to cancelling (the runner ends it as cancelled, its finished lines
    in the output file); a 409 for a batch that has ended."""
    store = app_store(request)
    batch = await _batch(request)
    while batch["status"] in _CANCELLABLE:
        cancelling = {**batch, "status": "cancelling", "cancelling_at": int(time.time())}
        if await asyncio.to_thread(store.update_batch, cancelling, batch["status"]):
            _runner(request).cancel(batch["id"])
            return JSONResponse(await _view(store, cancelling))
        batch = await _batch(request)  # the runner moved it on meanwhile
    if batch["status"] in ("cancelling", "cancelled"):
        return JSONResponse(await _view(store, batch))
    raise APIError(409, f"Cannot cancel a batch with status '{batch['status']}'.", param="batch_id")
