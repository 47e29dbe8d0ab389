"""Sentence embeddings: batches of concurrent calls through an encoder (see encoder.py), then
optional truncation and L2 normalization.

Forward passes run on one dedicated thread, never on the event loop. Concurrent calls are merged
(dynamic batching): the thread takes every call waiting, waits up to `max_wait_s` for more while
the batch is short of `max_batch` inputs, sorts all the inputs by length, runs them in forward
passes of at most `forward_batch` and hands each call its rows.

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
import os
import queue
import threading
import time
from dataclasses import dataclass

import torch

from service.engine.encoder import Encoder


@dataclass
class _Call:
    inputs: list[list[int]]
    future: asyncio.Future[torch.Tensor]

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
        self._thread = threading.Thread(target=self._serve, name="tokenwire-embed", daemon=True)
        self._thread.start()

    async def embed(
        self, inputs: list[list[int]], *, normalize: bool | None = None, dimensions: int | None = None
    ) -> torch.Tensor:
        """Embeds token-id inputs; returns a float32 CPU tensor [len(inputs), dimension]."""
        call = _Call(inputs, asyncio.get_running_loop().create_future())
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
        while (first := self._calls.get()) is not None:
            calls, closing = self._gather(first)
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
            if closing:
                return

    def _gather(self, first: _Call) -> tuple[list[_Call], bool]:
        """The calls of the next batch; True when close() was called meanwhile."""
        calls, size = [first], len(first.inputs)
        deadline = time.monotonic() + self._max_wait_s
        while size < self._max_batch:
            try:
                call = self._calls.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                break
            if call is None:
                return calls, True
            calls.append(call)
            size += len(call.inputs)
        return calls, False

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
