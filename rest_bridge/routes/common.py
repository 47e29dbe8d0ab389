"""What the routes share: body parsing, the worker's stubs, calls that end with the client, and
the generation flow of chat and completions (unary or streamed)."""
from __future__ import annotations

import asyncio
import codecs
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import pydantic_core
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rest_bridge import calls, schemas, translate
from rest_bridge.errors import APIError, ClientGone, from_validation_error, rpc_errors
from rest_bridge.fanout import PromptStreams, call_starters
from rest_bridge.sse import EventStreamResponse, generation_events
from rest_bridge.store import Store
from rest_bridge.upstream import Upstream, Upstreams
from tokenwire.limits import MAX_MESSAGE_BYTES
from tokenwire.stubs import WorkerStubs
from tokenwire.v1 import generation_pb2

Body = TypeVar("Body", bound=BaseModel)
Result = TypeVar("Result")
Found = TypeVar("Found")


class Cancellable(Protocol):
    def cancel(self) -> object: ...


# A body becomes one gRPC message to the worker.
MAX_BODY_BYTES = MAX_MESSAGE_BYTES


async def _read_body(request: Request) -> bytes:
    # Starlette's own body limit answers in plain text, not in the OpenAI envelope.
    too_large = APIError(413, f"The request body is larger than {MAX_BODY_BYTES} bytes.")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_body(request: Request, schema: type[Body]) -> Body:
    """The JSON object body validated against `schema`; every failure is a 400 with the envelope."""
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise APIError(400, f"Unsupported content type {content_type!r}; send a JSON body (application/json).")
    raw = await _read_body(request)
    try:
        # Unlike json.loads, pydantic's parser does not recurse in Python: nesting deeper than its
        # limit (200 levels) is a parse error, not a RecursionError here or in any later step.
        # It also refuses NaN and Infinity (not JSON) and lone surrogates (not UTF-8); a UTF-8 byte
        # order mark, which RFC 8259 lets parsers ignore, is ignored as json.loads ignores it.
        data = pydantic_core.from_json(raw.removeprefix(codecs.BOM_UTF8), allow_inf_nan=False)
    except ValueError as error:
        message = f"We could not parse the JSON body of your request ({error}); it must be valid JSON."
        raise APIError(400, message) from None
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.")
    try:
        return schema.model_validate(data)
    except ValidationError as error:
        raise from_validation_error(error) from None


def request_id(request: Request) -> str:
    return str(request.state.request_id)


def stubs_and_options(
    request: Request, metadata_call: bool = False, *, model: str | None = None, upstream: Upstream | None = None
) -> tuple[WorkerStubs, dict[str, Any]]:
    """The stubs of the next channel to the worker that serves `model` (or of `upstream`), and
    the keyword arguments for one call (deadline, request id); `metadata_call`: health or model
    cards, which a worker answers at once."""
    upstreams: Upstreams = request.app.state.upstreams
    pool = upstream or upstreams.for_model(model)
    return pool.stubs(), pool.call_options(request_id(request), metadata_call)


def worker_calls(request: Request, model: str | None) -> calls.Worker:
    """The stubs and call options of the worker that serves `model`, for this request."""
    return calls.Worker(*stubs_and_options(request, model=model))


def app_store(request: Request) -> Store:
    return request.app.state.store


async def stored(
    request: Request, key: str, lookup: Callable[[str], Found | None], missing: Callable[[str], APIError]
) -> Found:
    """What `lookup` (a store's method) finds for the id in the path parameter `key`; raises
    `missing(id)` when it finds nothing."""
    object_id = request.path_params[key]
    found = await asyncio.to_thread(lookup, object_id)
    if found is None:
        raise missing(object_id)
    return found


async def _disconnected(request: Request) -> None:
    # Called once the body is read: the next ASGI message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_ready(request: Request, calls: Sequence[Cancellable], work: Awaitable[Result]) -> Result:
    """Awaits `work` on `calls`, cancelling every call when it fails or the HTTP client goes away.

    Without this, a client that gives up on a long non-streaming answer would leave the worker
    generating for nobody.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            raise ClientGone
        return task.result()
    except BaseException:
        for call in calls:
            call.cancel()
        raise
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            # Nobody awaits it any more: consume its outcome so asyncio does not log it.
            task.add_done_callback(lambda done: done.cancelled() or done.exception())


async def generate(
    request: Request,
    fmt: translate.GenerationFormat,
    body: schemas.GenerationBody,
    protos: Sequence[generation_pb2.GenerateRequest],
) -> Response:
    """Runs one call per prompt (a few at a time, see fanout.py) and answers in `fmt`: JSON, or SSE
    once the worker has admitted the prompts started first to its running batch.

    Errors before the first stream message of those (validation, context overflow, queue full) are
    still plain JSON answers with their own status, since no byte of the stream has been sent; a
    later prompt's failure is an error event in the stream.
    """
    worker = worker_calls(request, body.model)
    if not body.stream:
        return JSONResponse(await until_ready(request, [], calls.generation_json(worker, fmt, body, protos)))
    streams, infos = await admitted_streams(request, worker, protos, translate.request_params(fmt, body))
    header = translate.ResponseHeader.new(fmt.id_prefix, body.model or infos[0].model)
    # Every prompt's request asks for the same outputs.
    logprobs = protos[0].HasField("logprobs")
    events = generation_events(fmt, streams, header, body.choices_per_prompt, body.include_usage, logprobs)
    return EventStreamResponse(events)


async def admitted_streams(
    request: Request,
    worker: calls.Worker,
    protos: Sequence[generation_pb2.GenerateRequest],
    params: Mapping[str, str],
) -> tuple[PromptStreams, list[generation_pb2.PromptInfo]]:
    """GenerateStream calls of the prompts and the prompt infos of those started first, once the
    worker has admitted these (until then, their errors are still plain HTTP answers)."""
    streams = PromptStreams(call_starters(worker.stubs.generation.GenerateStream, protos, worker.options))
    with rpc_errors(params):
        infos = await until_ready(request, [streams], streams.admitted())
    return streams, infos
