"""Sentence embeddings: batches of concurrent calls through an encoder (see encoder.py), then
optional truncation and L2 normalization.

Forward passes run on one dedicated thread, never on the event loop. Concurrent calls are merged
(dynamic batching): the thread takes every call waiting, waits up to `max_wait_s` for more while
they are short of `max_batch` inputs, and makes a batch of the waiting calls in priority order
(lower value first, then arrival) up to `max_batch` inputs; calls left out wait for the next
batch, so bulk work (the Batch API's lines) never holds up interactive calls for more than the
batch already running. The batch's inputs are sorted by length, run in forward passes of at most
`forward_batch`, and each call gets its rows.

Why forward passes smaller than the merged batch, for encoders that pad (transformers'
forward; the lean BERT encoder packs its tokens and takes the whole batch at once): sorted
sentences in passes of 16 pad ~13% where a pass of 32 pads ~30% (bench sentences), and on CPU a
pass of 16 short sentences already keeps the matrix units busy: measured 350 sentences/s against
255-293/s in passes of 32 (all-MiniLM-L6-v2, 2 cores).

Threads on CPU: every core, merged batch or lone call. Measured with 64 clients sending one
sentence each through the bridge (aiohttp clients, all on the same 2 cores): 233-312 sentences/s
on both cores against 154-213/s with a core left to the event loop and the bridge under load
(five runs each). An earlier measurement had favoured the spare core; its clients (httpx) took
~7 ms of CPU per request on the same cores, and real clients run elsewhere.
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import queue
import threading
import time
from dataclasses import dataclass, field

import torch

from service.engine.encoder import Encoder


@dataclass(order=True)
class _Call:
    # Ordered by (priority, arrival): the order calls are taken in.
    priority: int
    arrival: int
    inputs: list[list[int]] = field(compare=False)
    future: asyncio.Future[torch.Tensor] = field(compare=False)

    def resolve(self, result: torch.Tensor | BaseException) -> None:
        """Called from the embedding thread."""

        def settle() -> None:
            if self.future.done():  # the caller went away
                return
            if isinstance(result, BaseException):
                self.future.set_exception(result)
            else:
                self.future.set_result(result)

        try:
            self.future.get_loop().call_soon_threadsafe(settle)
        except RuntimeError:  # the event loop is closed
            pass


class Embedder:
    def __init__(
        self,
        encoder: Encoder,
        device: torch.device,
        *,
        normalize: bool = True,
        max_batch: int = 32,
        max_wait_s: float = 0.002,
    ) -> None:
        self.encoder = encoder
        self.device = device
        self.normalize_by_default = normalize
        self._max_batch = max_batch
        # Passes of 16 on CPU when the encoder pads (see the module's docstring); a GPU gains
        # from wider passes.
        self._forward_batch = 16 if encoder.pads and device.type == "cpu" else max_batch
        self._max_wait_s = max_wait_s
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._arrivals = itertools.count()
        # Calls taken off the queue and not yet run (embedding thread only); a heap.
        self._waiting: list[_Call] = []
        self._thread = threading.Thread(target=self._serve, name="tokenwire-embed", daemon=True)
        self._thread.start()

    async def embed(
        self,
        inputs: list[list[int]],
        *,
        normalize: bool | None = None,
        dimensions: int | None = None,
        priority: int = 0,
    ) -> torch.Tensor:
        """Embeds token-id inputs; returns a float32 CPU tensor [len(inputs), dimension]. Calls with
        a lower `priority` value are taken first."""
        call = _Call(priority, next(self._arrivals), inputs, asyncio.get_running_loop().create_future())
        self._calls.put(call)
        pooled = await call.future
        if dimensions:
            pooled = pooled[:, :dimensions]
        if self.normalize_by_default if normalize is None else normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
        return pooled

    def close(self) -> None:
        self._calls.put(None)

    def _serve(self) -> None:
        open_ = True
        while open_ or self._waiting:
            if open_:
                open_ = self._gather()
            if self._waiting:
                self._run(self._next_batch())

    def _run(self, calls: list[_Call]) -> None:
        inputs = [ids for call in calls for ids in call.inputs]
        pooled: torch.Tensor | Exception
        try:
            pooled = self._embed_all(inputs)
        except Exception as error:  # fails the calls of this batch, not the embedder
            pooled = error
        start = 0
        for call in calls:
            call.resolve(pooled if isinstance(pooled, Exception) else pooled[start : start + len(call.inputs)])
            start += len(call.inputs)

    def _gather(self) -> bool:
        """Moves queued calls to the waiting heap: blocks for one when none waits, then takes more
        for up to `max_wait_s` while the waiting calls are short of `max_batch` inputs, and every
        call already queued. False once close() was called."""
        size = sum(len(call.inputs) for call in self._waiting)
        deadline = time.monotonic() + self._max_wait_s
        block = not self._waiting
        while True:
            try:
                if block:
                    call = self._calls.get()
                    block = False
                elif size < self._max_batch:
                    call = self._calls.get(timeout=max(deadline - time.monotonic(), 0.0))
                else:
                    call = self._calls.get_nowait()
            except queue.Empty:
                return True
            if call is None:
                return False
            heapq.heappush(self._waiting, call)
            size += len(call.inputs)

    def _next_batch(self) -> list[_Call]:
        """The waiting calls of highest priority, up to `max_batch` inputs (one call at least)."""
        calls = [heapq.heappop(self._waiting)]
        size = len(calls[0].inputs)
        while self._waiting and size + len(self._waiting[0].inputs) <= self._max_batch:
            call = heapq.heappop(self._waiting)
            calls.append(call)
            size += len(call.inputs)
        return calls

    @torch.inference_mode()
    def _embed_all(self, inputs: list[list[int]]) -> torch.Tensor:
        if self.device.type == "cpu":  # compute-bound: every core (see the module's docstring)
            # Per batch: torch's thread count is the process's, and the generation engine sets its own.
            torch.set_num_threads(len(os.sched_getaffinity(0)))
        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
        out: list[torch.Tensor | None] = [None] * len(inputs)
        for start in range(0, len(order), self._forward_batch):
            chunk = order[start : start + self._forward_batch]
            for i, vector in zip(chunk, self.encoder([inputs[i] for i in chunk]).cpu()):
                out[i] = vector
        return torch.stack(out)  # type: ignore[arg-type]
