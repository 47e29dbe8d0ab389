"""The engine's output side: sampled tokens become text, stop strings end sequences, updates reach
the asyncio streams — in a thread of its own, off the scheduler thread.

The scheduler hands over one batch per step (each sequence's new token, or its end) and goes on
with the next forward pass, which releases the GIL, while this thread detokenizes, matches stop
strings and shapes logprobs. The scheduler decides what the tokens decide (stop tokens, EOS,
max_new_tokens, time limits, grammars); a stop string is found here, and this thread tells the
scheduler, which stops the sequence at its next iteration. Tokens it sampled meanwhile are
dropped: what a client sees is the same as if the sequence had stopped at once.
"""
from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator

from service.engine.detokenizer import Decoder, IncrementalDetokenizer
from service.engine.logprobs import ScoredTokens
from service.engine.stop import StopStringMatcher
from service.engine.types import Admission, Finish, FinishReason, GenerationRequest, SequenceUpdate, TokenLogprob

if TYPE_CHECKING:
    from service.engine.engine import GenerationEngine

_END = object()


class RequestStream:
    """The asyncio side of one request: the admission, then updates, pushed by the engine's
    threads and read by a servicer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, engine: GenerationEngine, sequences: int) -> None:
        self._loop = loop
        self._engine = engine
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._done = False
        # Read first by __anext__ when admitted() took it off the queue.
        self._held: object | None = None
        self.admission: Admission | None = None
        # Output thread only: sequences not finished yet.
        self._unfinished = sequences
        # Scheduler thread only: whether the request joined the running batch.
        self._joined = False

    def _push(self, item: object) -> None:
        """Called from the engine's threads."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass

    def cancel(self) -> None:
        """Stops the request's sequences at the engine's next iteration. Idempotent."""
        if not self._done:
            self._done = True
            self._engine._inbox.put(("cancel", self))

    async def admitted(self) -> Admission | None:
        """Waits until the request joins the running batch. None when it ended before (aborted
        while it waited); raises the engine's error if it failed."""
        if self.admission is None and self._held is None:
            item = await self._queue.get()
            if isinstance(item, Admission):
                self.admission = item
            else:
                self._held = item
        return self.admission

    def __aiter__(self) -> AsyncIterator[SequenceUpdate]:
        return self

    async def __anext__(self) -> SequenceUpdate:
        while True:
            if self._held is not None:
                item, self._held = self._held, None
            else:
                item = await self._queue.get()
            if isinstance(item, Admission):
                self.admission = item
                continue
            if item is _END:
                self._done = True
                raise StopAsyncIteration
            if isinstance(item, BaseException):
                self._done = True
                raise item
            return item  # type: ignore[return-value]


@dataclass(eq=False)
class SequenceOutput:
    """What one sequence has said so far. Owned by the output thread once created."""

    request: GenerationRequest
    stream: RequestStream
    index: int
    detokenizer: IncrementalDetokenizer
    stops: StopStringMatcher
    # The scheduler's sequence, handed back when a stop string ends it.
    sequence: object = None
    produced: int = 0
    text: str = ""
    emitted: int = 0
    finished: bool = False
    unsent_ids: list[int] = field(default_factory=list)
    unsent_logprobs: list[TokenLogprob] = field(default_factory=list)
    # Set once, with the first token, when the request asked for prompt logprobs.
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None

    @classmethod
    def create(cls, request: GenerationRequest, stream: RequestStream, index: int, tokenizer: Decoder) -> SequenceOutput:
        stopping = request.stopping
        return cls(
            request=request,
            stream=stream,
            index=index,
            detokenizer=IncrementalDetokenizer(tokenizer, request.skip_special_tokens),
            stops=StopStringMatcher(stopping.stop_strings, stopping.include_stop_string),
        )


@dataclass(frozen=True)
class Emitted:
    """One sequence's share of a step's output: its new token (None when it ended without one:
    aborted), and the end the scheduler decided (None: it goes on)."""

    output: SequenceOutput
    token: int | None
    finish: Finish | None = None
    # Its row in the step's ScoredTokens, when the request asked for logprobs.
    scored_row: int | None = None
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None


@dataclass(frozen=True)
class StepOutput:
    emitted: list[Emitted]
    scored: ScoredTokens | None = None


class OutputThread:
    """Turns the scheduler's StepOutputs into stream updates, in order, in a thread of its own.
    `stopped(sequence)` is called (from this thread) when a stop string ends a sequence the
    scheduler still runs."""

    def __init__(self, stopped: Callable[[object], None]) -> None:
        self._stopped = stopped
        self._queue: queue.SimpleQueue[StepOutput | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="tokenwire-output", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, step: StepOutput) -> None:
        self._queue.put(step)

    def stop(self) -> None:
        """Ends the thread once everything put before has been handled."""
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while (step := self._queue.get()) is not None:
            scored = step.scored.rows() if step.scored is not None else []
            for item in step.emitted:
                self._handle(item, scored[item.scored_row] if item.scored_row is not None else None)

    def _handle(self, item: Emitted, logprob: TokenLogprob | None) -> None:
        out = item.output
        if out.finished:
            return  # a stop string ended it: what the scheduler sampled since is dropped
        if item.prompt_logprobs is not None:
            out.prompt_logprobs = item.prompt_logprobs
        finish = item.finish
        if item.token is not None:
            out.produced += 1
            out.unsent_ids.append(item.token)
            if logprob is not None:
                out.unsent_logprobs.append(logprob)
            if finish is None or finish.stop_token_id is None:  # a stop token's text is never shown
                text_finish = _append_text(out, out.detokenizer.push(item.token))
                if text_finish is not None:
                    if finish is None:
                        self._stopped(out.sequence)
                    finish = text_finish
        if finish is not None and not finish.stop_string:
            finish = _append_text(out, out.detokenizer.flush()) or finish
        _emit(out, finish)


def _append_text(out: SequenceOutput, new_text: str) -> Finish | None:
    if not new_text:
        return None
    new_from = len(out.text)
    out.text += new_text
    if out.produced < out.request.stopping.min_new_tokens:
        return None  # as in vLLM, stop strings count from min_new_tokens on, like stop tokens
    match = out.stops.find(out.text, new_from)
    if match is None:
        return None
    out.text = out.text[: match.text_end]
    return Finish(FinishReason.STOP, stop_string=match.stop_string)


def _emit(out: SequenceOutput, finish: Finish | None) -> None:
    end = len(out.text) if finish else out.stops.safe_end(out.text)
    if end <= out.emitted and finish is None:
        return
    text, out.emitted = out.text[out.emitted : end], max(end, out.emitted)
    out.stream._push(
        SequenceUpdate(
            out.index,
            text,
            tuple(out.unsent_ids),
            finish,
            logprobs=tuple(out.unsent_logprobs),
            prompt_logprobs=out.prompt_logprobs,
        )
    )
    out.prompt_logprobs = None
    out.unsent_ids.clear()
    out.unsent_logprobs.clear()
    if finish is not None:
        out.finished = True
        out.stream._unfinished -= 1
        if out.stream._unfinished == 0:
            out.stream._push(_END)
