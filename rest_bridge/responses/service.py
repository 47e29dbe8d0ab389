"""Creating a response: its conversation (with the stored turns it continues), one chat
generation on the worker, its output items, and keeping it (store: true).

Used by POST /v1/responses (streamed or not) and by the batch runner (not streamed).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from rest_bridge import calls, translate
from rest_bridge.errors import APIError, from_exception
from rest_bridge.fanout import PromptStreams
from rest_bridge.ids import new_id
from rest_bridge.responses.conversation import RESPONSE_PARAMS, chat_body, chat_messages, item_json
from rest_bridge.responses.output import ResponseBuilder
from rest_bridge.responses.schemas import NamedFunction, ResponseCreateRequest
from rest_bridge.sse import encode_named_event
from rest_bridge.store import Store, StoredResponse
from tokenwire.v1 import common_pb2, generation_pb2

Json = dict[str, Any]


def not_found(response_id: str) -> APIError:
    return APIError(404, f"Response with id '{response_id}' not found.", param="response_id")


@dataclass(frozen=True)
class PreparedResponse:
    """A response about to be generated: its request, conversation and worker request."""

    body: ResponseCreateRequest
    id: str
    created_at: int
    input_items: list[Json]
    # The conversation before the input (from previous_response_id).
    history: list[Json]
    chat: generation_pb2.GenerateRequest

    def in_progress(self, model: str) -> Json:
        """The response object before its output, as OpenAI shows it."""
        body = self.body
        text_format = (
            body.text.format.model_dump(by_alias=True, exclude_none=True) if body.text and body.text.format else None
        )
        choice = body.tool_choice
        tool_choice = choice.model_dump() if isinstance(choice, NamedFunction) else choice
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": "in_progress",
            "background": False,
            "completed_at": None,
            "error": None,
            "incomplete_details": None,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "model": model,
            "output": [],
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "previous_response_id": body.previous_response_id,
            "store": body.stored,
            "temperature": 1.0 if body.temperature is None else body.temperature,
            "text": {"format": text_format or {"type": "text"}},
            "tool_choice": tool_choice or "auto",
            "tools": [
                {**tool.model_dump(exclude_none=True), "strict": tool.strict is not False} for tool in body.tools or ()
            ],
            "top_p": 1.0 if body.top_p is None else body.top_p,
            "truncation": "disabled",
            "usage": None,
            "user": body.user,
            "metadata": body.metadata or {},
        }

    def stored(self, response: Json) -> StoredResponse:
        return StoredResponse(response, self.input_items, self.history)


async def prepare(store: Store, body: ResponseCreateRequest, request_id: str) -> PreparedResponse:
    """Rebuilds the conversation (400 when previous_response_id names no stored response) and
    translates it to the worker's chat request."""
    history: list[Json] = []
    if body.previous_response_id is not None:
        previous = await asyncio.to_thread(store.get_response, body.previous_response_id)
        if previous is None:
            raise APIError(
                400,
                f"Previous response with id '{body.previous_response_id}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        history = [*previous.history, *previous.input_items, *previous.response["output"]]
    input_items = [item_json(item) for item in body.input]
    chat = chat_body(body, chat_messages(body.instructions, [*history, *input_items]))
    return PreparedResponse(
        body=body,
        id=new_id("resp_"),
        created_at=int(time.time()),
        input_items=input_items,
        history=history,
        chat=translate.chat_request(chat, request_id),
    )


async def keep(store: Store, prepared: PreparedResponse, response: Json) -> None:
    if prepared.body.stored:
        await asyncio.to_thread(store.add_response, prepared.stored(response))


async def respond(
    worker: calls.Worker, store: Store, prepared: PreparedResponse, *, interrupted_ok: bool = True
) -> Json:
    """Generates the whole response, keeps it if asked, and returns it."""
    [answer] = await calls.generation_answers(worker, [prepared.chat], RESPONSE_PARAMS, interrupted_ok=interrupted_ok)
    builder = ResponseBuilder(prepared.in_progress(prepared.body.model or answer.prompt_info.model))
    response = builder.whole(answer.sequences[0], answer.usage)
    await keep(store, prepared, response)
    return response


def _encode(events: list[Json]) -> bytes:
    return b"".join(encode_named_event(event["type"], event) for event in events)


async def stream_events(
    store: Store, prepared: PreparedResponse, streams: PromptStreams, model: str
) -> AsyncGenerator[bytes, None]:
    """The response's stream events, from a stream the worker has admitted. A failure after the
    first byte ends the stream with an `error` event and `response.failed`."""
    builder = ResponseBuilder(prepared.in_progress(model))
    reason: generation_pb2.FinishReason.ValueType = generation_pb2.FINISH_REASON_UNSPECIFIED
    usage = common_pb2.Usage()
    try:
        yield _encode(builder.started())
        try:
            async for _, message in streams.messages():
                if message.HasField("delta"):
                    delta = message.delta
                    events = builder.text(delta.text)
                    for call in delta.tool_calls:
                        events += builder.tool_call_delta(call)
                    if delta.HasField("finish"):
                        reason = delta.finish.reason
                    if events:
                        yield _encode(events)
                elif message.HasField("usage"):
                    usage = message.usage
            events = builder.finish(reason, usage)
            await keep(store, prepared, builder.response)
            yield _encode(events)
        except Exception as error:
            failure = from_exception(error, RESPONSE_PARAMS)
            yield _encode(builder.failed(failure.status, failure.code, failure.message, failure.param))
    finally:
        await streams.aclose()
