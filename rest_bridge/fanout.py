"""One HTTP request's prompts as gRPC calls, a bounded number of them in flight at once.

The worker serves one prompt per call, and a completions request may carry thousands of prompts.
Started all at once, they would fill the worker's queue, crowding out every other client, and a
list longer than the queue would be refused every time it is retried. Here each request runs its
calls on a few lanes; a lane starts its next prompt when its call ends.
"""
from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import grpc

from rest_bridge.errors import APIError
from tokenwire.limits import DEFAULT_MAX_RUNNING
from tokenwire.v1 import generation_pb2

# Calls of one request in flight at most: enough to fill the worker's default batch (its default
# --max-running).
MAX_CALLS_IN_FLIGHT = DEFAULT_MAX_RUNNING

Call = TypeVar("Call", bound=grpc.aio.Call)
Admission = TypeVar("Admission")
StreamCall = grpc.aio.UnaryStreamCall
StreamItem = tuple[int, generation_pb2.GenerateStreamResponse]


class FanOut(Generic[Call]):
    """Starts one call per prompt, prompts in order, at most `limit` in flight.

    RESOURCE_EXHAUSTED while other calls of the request are in flight is the request's own doing
    (the worker's queue is shorter than the lanes): that lane closes and its prompt goes first to
    the next lane that frees. With no other call in flight, the worker is full for everyone, and
    the error stands.
    """

    def __init__(self, starts: Sequence[Callable[[], Call]], limit: int = MAX_CALLS_IN_FLIGHT) -> None:
        self.prompts = len(starts)
        self.limit = min(limit, self.prompts)
        self._pending = deque(enumerate(starts))
        self._lanes = 0
        # Bounded by the number of prompts per request.
        self._calls: list[Call] = []

    async def run(
        self,
        admit: Callable[[Call], Awaitable[Admission]],
        consume: Callable[[int, Call, Admission], Awaitable[None]],
    ) -> None:
        """Runs `consume(prompt index, call, await admit(call))` for every prompt; only errors of
        `admit` count as refusals. The first failure cancels every other call."""
        self._lanes = self.limit
        lanes = [asyncio.ensure_future(self._lane(admit, consume)) for _ in range(self.limit)]
        try:
            await asyncio.gather(*lanes)
        finally:
            for lane in lanes:
                lane.cancel()
            self.cancel()

    async def _lane(
        self,
        admit: Callable[[Call], Awaitable[Admission]],
        consume: Callable[[int, Call, Admission], Awaitable[None]],
    ) -> None:
        # Between two calls a lane never waits: open lanes are exactly the calls in flight.
        try:
            while self._pending:
                index, start = self._pending.popleft()
                call = start()
                self._calls.append(call)
                try:
                    admission = await admit(call)
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or self._lanes == 1:
                        raise
                    self._pending.appendleft((index, start))
                    return
                await consume(index, call, admission)
        finally:
            self._lanes -= 1

    def cancel(self) -> None:
        for call in self._calls:
            call.cancel()


def call_starters(
    method: Callable[..., Call], protos: Sequence[generation_pb2.GenerateRequest], options: dict[str, Any]
) -> list[Callable[[], Call]]:
    """A call starter per prompt, for a FanOut. The calls share the request's deadline: a prompt
    that waits for a free lane has that much less time."""
    timeout = options["timeout"]
    deadline = None if timeout is None else time.monotonic() + timeout

    def start(proto: generation_pb2.GenerateRequest) -> Call:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return method(proto, **{**options, "timeout": left})

    return [functools.partial(start, proto) for proto in protos]


async def _response(call: grpc.aio.UnaryUnaryCall) -> generation_pb2.GenerateResponse:
    return await call


async def responses(fanout: FanOut[grpc.aio.UnaryUnaryCall]) -> list[generation_pb2.GenerateResponse]:
    """The Generate responses of every prompt, in prompt order."""
    found: dict[int, generation_pb2.GenerateResponse] = {}

    async def keep(index: int, call: grpc.aio.UnaryUnaryCall, response: generation_pb2.GenerateResponse) -> None:
        found[index] = response

    await fanout.run(_response, keep)
    return [found[index] for index in range(fanout.prompts)]


async def _opened(call: StreamCall) -> generation_pb2.GenerateStreamResponse:
    """The first message of a stream (PromptInfo): the worker has admitted the request to its
    running batch."""
    first = await call.read()
    if first is grpc.aio.EOF or not first.HasField("prompt_info"):
        raise APIError(502, "The model worker broke the stream protocol (no prompt info).", type="server_error")
    return first


class PromptStreams:
    """GenerateStream calls of every prompt in a FanOut: their messages as they come (prompt infos
    included), each with its prompt's index. Each call's messages keep their order."""

    def __init__(self, starts: Sequence[Callable[[], StreamCall]], limit: int = MAX_CALLS_IN_FLIGHT) -> None:
        self._fanout = FanOut(starts, limit)
        self.prompts = self._fanout.prompts
        # Messages, then None once every call has ended, or the error that ended them.
        self._queue: asyncio.Queue[StreamItem | Exception | None] = asyncio.Queue()
        self._read_early: deque[StreamItem | None] = deque()
        self._runner = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            await self._fanout.run(_opened, self._copy)
        except Exception as error:  # raised by the reader
            self._queue.put_nowait(error)
        else:
            self._queue.put_nowait(None)

    async def _copy(self, index: int, call: StreamCall, first: generation_pb2.GenerateStreamResponse) -> None:
        self._queue.put_nowait((index, first))
        while (message := await call.read()) is not grpc.aio.EOF:
            self._queue.put_nowait((index, message))

    async def _next(self) -> StreamItem | None:
        item = await self._queue.get()
        if isinstance(item, Exception):
            raise item
        return item

    async def admitted(self) -> list[generation_pb2.PromptInfo]:
        """The prompt infos of the prompts started first (one per lane), once the worker has
        admitted them all to its running batch: before the first byte of a response, their errors
        are still plain HTTP answers. Messages read meanwhile wait for `messages`."""
        infos: dict[int, generation_pb2.PromptInfo] = {}
        while len(infos) < self._fanout.limit:
            item = await self._next()
            self._read_early.append(item)
            if item is not None and item[0] < self._fanout.limit and item[1].HasField("prompt_info"):
                infos[item[0]] = item[1].prompt_info
        return [infos[index] for index in range(len(infos))]

    async def messages(self) -> AsyncIterator[StreamItem]:
        """Every message, until every call has ended; raises the error of a failed call."""
        while (item := self._read_early.popleft() if self._read_early else await self._next()) is not None:
            yield item

    def cancel(self) -> None:
        self._runner.cancel()
        self._fanout.cancel()

    async def aclose(self) -> None:
        self.cancel()
        await asyncio.gather(self._runner, return_exceptions=True)
