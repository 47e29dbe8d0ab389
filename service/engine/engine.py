"""The generation engine: a scheduler loop in its own thread, fed and drained through
thread-safe queues, so a forward pass never blocks the asyncio event loop.

Public face: `submit(request) -> RequestStream` (an async iterator of SequenceUpdate) and
`RequestStream.cancel()`. Every iteration of the loop admits waiting requests (up to
`max_running` sequences), runs one forward pass per running sequence, samples all of them in one
batched call and hands the new text to the requests' streams. Cancelled sequences are dropped
at the next iteration, freeing their KV cache.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import AsyncIterator

import torch

from service.engine.detokenizer import Decoder, IncrementalDetokenizer
from service.engine.runner import ModelRunner, SequenceState
from service.engine.sampler import SamplingRow, sample
from service.engine.stop import StopStringMatcher
from service.engine.types import Finish, FinishReason, GenerationRequest, SequenceUpdate
from service.errors import NotReady, QueueFull

log = logging.getLogger(__name__)

_END = object()


class RequestStream:
    """The asyncio side of one request: updates pushed by the engine thread, read by a servicer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, engine: GenerationEngine) -> None:
        self._loop = loop
        self._engine = engine
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._done = False

    def _push(self, item: object) -> None:
        """Called from the engine thread."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass

    def cancel(self) -> None:
        """Stops the request's sequences at the engine's next iteration. Idempotent."""
        if not self._done:
            self._done = True
            self._engine._inbox.put(("cancel", self))

    def __aiter__(self) -> AsyncIterator[SequenceUpdate]:
        return self

    async def __anext__(self) -> SequenceUpdate:
        item = await self._queue.get()
        if item is _END:
            self._done = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return item  # type: ignore[return-value]


@dataclass
class _Sequence:
    request: GenerationRequest
    stream: RequestStream
    index: int
    row: SamplingRow
    detokenizer: IncrementalDetokenizer
    stops: StopStringMatcher
    deadline: float | None
    state: SequenceState | None = None
    logits: torch.Tensor | None = None
    text: str = ""
    emitted: int = 0
    unsent_ids: list[int] = field(default_factory=list)
    finished: bool = False


class GenerationEngine:
    def __init__(
        self,
        runner: ModelRunner,
        tokenizer: Decoder,
        eos_token_ids: frozenset[int],
        *,
        max_running: int = 16,
        max_waiting: int = 256,
    ) -> None:
        self._runner = runner
        self._tokenizer = tokenizer
        self._eos = eos_token_ids
        self._max_running = max_running
        self._max_waiting = max_waiting
        self._inbox: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
        self._waiting: deque[tuple[GenerationRequest, RequestStream]] = deque()
        self._running: list[_Sequence] = []
        self._admission = threading.Lock()
        self._not_admitted = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="tokenwire-engine", daemon=True)

    # asyncio side ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._inbox.put(("stop", None))
        self._thread.join(timeout=10)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, request: GenerationRequest) -> RequestStream:
        """Queues a validated request. Raises QueueFull when the waiting queue is at its limit."""
        if not self.alive:
            raise NotReady("The generation engine is not running.")
        with self._admission:
            if self._not_admitted >= self._max_waiting:
                raise QueueFull(
                    f"The server is at capacity ({self._max_waiting} requests waiting); retry shortly.",
                    retry_after_s=1.0,
                )
            self._not_admitted += 1
        stream = RequestStream(asyncio.get_running_loop(), self)
        self._inbox.put(("submit", (request, stream)))
        return stream

    # engine thread --------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            self._read_inbox(block=not (self._running or self._waiting))
            self._admit()
            if self._running:
                try:
                    self._step()
                except Exception as error:  # a failed forward pass fails its batch, not the engine
                    log.exception("generation step failed")
                    self._fail_running(error)
        for seq in self._running:
            seq.stream._push(NotReady("The worker is shutting down."))
        for _, stream in self._waiting:
            stream._push(NotReady("The worker is shutting down."))

    def _read_inbox(self, block: bool) -> None:
        while True:
            try:
                kind, payload = self._inbox.get(block=block)
            except queue.Empty:
                return
            block = False
            if kind == "submit":
                self._waiting.append(payload)  # type: ignore[arg-type]
            elif kind == "cancel":
                self._cancel(payload)  # type: ignore[arg-type]

    def _cancel(self, stream: RequestStream) -> None:
        before = len(self._waiting)
        self._waiting = deque(item for item in self._waiting if item[1] is not stream)
        if len(self._waiting) != before:
            with self._admission:
                self._not_admitted -= 1
        self._running = [seq for seq in self._running if seq.stream is not stream]

    def _admit(self) -> None:
        # A request with n above max_running is admitted alone rather than never.
        while self._waiting and (
            not self._running or len(self._running) + self._waiting[0][0].n <= self._max_running
        ):
            request, stream = self._waiting.popleft()
            with self._admission:
                self._not_admitted -= 1
            self._running.extend(self._new_sequences(request, stream))

    def _new_sequences(self, request: GenerationRequest, stream: RequestStream) -> list[_Sequence]:
        stopping = request.stopping
        deadline = time.monotonic() + stopping.time_limit_s if stopping.time_limit_s else None
        banned = frozenset() if stopping.ignore_eos else self._eos
        banned = (banned | stopping.stop_token_ids) if stopping.min_new_tokens else frozenset()
        return [
            _Sequence(
                request=request,
                stream=stream,
                index=i,
                row=SamplingRow(
                    params=request.sampling,
                    generator=torch.Generator().manual_seed((request.seed + i) % 2**63),
                    prompt_ids=request.prompt_ids,
                    banned_ids=banned,
                ),
                detokenizer=IncrementalDetokenizer(self._tokenizer, request.skip_special_tokens),
                stops=StopStringMatcher(stopping.stop_strings, stopping.include_stop_string),
                deadline=deadline,
            )
            for i in range(request.n)
        ]

    def _step(self) -> None:
        for seq in self._running:
            if seq.state is None:
                self._prefill(seq)
            elif seq.logits is None:
                seq.logits = self._runner.decode(seq.row.output_ids[-1], seq.state)
        tokens = sample(torch.stack([seq.logits for seq in self._running]), [s.row for s in self._running])
        still_running = []
        for seq, token in zip(self._running, tokens):
            seq.logits = None
            if not self._advance(seq, token):
                still_running.append(seq)
        self._running = still_running

    def _prefill(self, seq: _Sequence) -> None:
        """The first sequence of a request runs the prompt; its siblings copy the result."""
        sibling = next(
            (s for s in self._running if s.stream is seq.stream and s.state is not None and not s.row.output_ids),
            None,
        )
        if sibling is not None:
            seq.state, seq.logits = self._runner.fork(sibling.state), sibling.logits  # type: ignore[arg-type]
        else:
            seq.logits, seq.state = self._runner.prefill(seq.request.prompt_ids)

    def _advance(self, seq: _Sequence, token: int) -> bool:
        """Adds a sampled token, emits what can be emitted; returns True when the sequence ended."""
        stopping = seq.request.stopping
        seq.row.output_ids.append(token)
        seq.unsent_ids.append(token)
        finish: Finish | None = None
        if token in stopping.stop_token_ids or (token in self._eos and not stopping.ignore_eos):
            finish = Finish(FinishReason.STOP, stop_token_id=token)
        else:
            new_text = seq.detokenizer.push(token)
            finish = self._append_text(seq, new_text)
        if finish is None:
            produced = len(seq.row.output_ids)
            if produced >= stopping.min_new_tokens and seq.row.banned_ids:
                seq.row.banned_ids = frozenset()
            if produced >= stopping.max_new_tokens:
                reason = FinishReason.CONTEXT_LENGTH if stopping.max_new_tokens_is_context_limit else FinishReason.LENGTH
                finish = Finish(reason)
            elif seq.deadline is not None and time.monotonic() >= seq.deadline:
                finish = Finish(FinishReason.TIME_LIMIT)
        if finish is not None and not finish.stop_string:
            finish = self._append_text(seq, seq.detokenizer.flush()) or finish
        self._emit(seq, finish)
        return finish is not None

    @staticmethod
    def _append_text(seq: _Sequence, new_text: str) -> Finish | None:
        if not new_text:
            return None
        new_from = len(seq.text)
        seq.text += new_text
        match = seq.stops.find(seq.text, new_from)
        if match is None:
            return None
        seq.text = seq.text[: match.text_end]
        return Finish(FinishReason.STOP, stop_string=match.stop_string)

    def _emit(self, seq: _Sequence, finish: Finish | None) -> None:
        end = len(seq.text) if finish else seq.stops.safe_end(seq.text)
        if end <= seq.emitted and finish is None:
            return
        text, seq.emitted = seq.text[seq.emitted : end], max(end, seq.emitted)
        seq.stream._push(SequenceUpdate(seq.index, text, tuple(seq.unsent_ids), finish))
        seq.unsent_ids.clear()
        if finish is not None:
            seq.finished = True
            if all(s.finished for s in self._running if s.stream is seq.stream):
                seq.stream._push(_END)

    def _fail_running(self, error: Exception) -> None:
        for stream in {id(s.stream): s.stream for s in self._running}.values():
            stream._push(error)
        self._running = []
