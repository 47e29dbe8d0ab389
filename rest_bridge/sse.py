"""Server-Sent Events: OpenAI's framing, and generation streams turned into chunk events.

Chat and completions: every event is exactly `data: <compact JSON>\\n\\n` and a stream ends with
`data: [DONE]\\n\\n`; never `id:`, `retry:` or `event:` lines (the OpenAI Python SDK fails on them
there). The Responses API is the exception: each of its events has an `event:` line naming its
type before the data, and no `[DONE]` ends the stream (encode_named_event).
"""
from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from rest_bridge import translate
from rest_bridge.errors import from_exception
from rest_bridge.fanout import PromptStreams
from tokenwire.v1 import common_pb2

DONE = b"data: [DONE]\n\n"


def encode_event(payload: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def encode_named_event(name: str, payload: Mapping[str, Any]) -> bytes:
    """An event of the Responses API: `event: <name>` then the data line."""
    return f"event: {name}\n".encode() + encode_event(payload)


class EventStreamResponse(StreamingResponse):
    """A text/event-stream response that always closes its event generator.

    Closing runs the generator's cleanup (cancelling the gRPC calls) however the response ends:
    finished, client disconnected, or failed while sending.
    """

    def __init__(self, events: AsyncGenerator[bytes, None], headers: Mapping[str, str] | None = None) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
        )
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._events.aclose()


async def generation_events(
    fmt: translate.GenerationFormat,
    streams: PromptStreams,
    header: translate.ResponseHeader,
    n: int,
    include_usage: bool,
    logprobs: bool = False,
) -> AsyncGenerator[bytes, None]:
    """Chunk events of the streams of every prompt.

    Prompt i streams its n choices, indexed i·n + j. With `logprobs`, each chunk carries the
    logprobs of its tokens; tokens of a delta without text wait for the choice's next chunk. An
    echoed prompt comes first in a choice's first chunk. A failure after the first byte becomes an
    error event; the calls are cancelled when the generator ends early or is closed (client gone),
    so the worker stops generating.
    """
    usages: list[common_pb2.Usage] = []
    shapers: dict[int, translate.ChatLogprobs | translate.CompletionLogprobs] = {}

    def chunk(choices: list[dict[str, Any]], usage: common_pb2.Usage | None = None) -> bytes:
        return encode_event(translate.stream_chunk(fmt, header, choices, include_usage, usage))

    try:
        try:
            if fmt.opening_choice is not None:
                for index in range(streams.prompts * n):
                    yield chunk([fmt.opening_choice(index)])
            async for prompt_index, message in streams.messages():
                if message.HasField("delta"):
                    delta = message.delta
                    reason = translate.finish_reason(delta.finish) if delta.HasField("finish") else None
                    index, text = prompt_index * n + delta.index, delta.prompt_text + delta.text
                    if logprobs:
                        shapers.setdefault(index, fmt.logprobs()).add(delta)
                    # Tool-call deltas (chat with tools) follow the delta's content, in their
                    # own chunk, which then carries the finish reason.
                    tool_calls = delta.tool_calls
                    if text or (reason and not tool_calls):
                        choice = fmt.chunk_choice(index, text, None if tool_calls else reason)
                        if logprobs:
                            choice["logprobs"] = shapers[index].chunk()
                        yield chunk([choice])
                    if tool_calls:
                        yield chunk([translate.chat_tool_calls_chunk_choice(index, tool_calls, reason)])
                elif message.HasField("usage"):
                    usages.append(message.usage)
            if include_usage:
                yield chunk([], translate.sum_usage(usages))
        except Exception as error:
            yield encode_event(from_exception(error, fmt.params).body())
        yield DONE
    finally:
        await streams.aclose()
