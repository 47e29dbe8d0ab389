"""The generation engine: continuous batching in a scheduler thread, fed and drained through
thread-safe queues, so a forward pass never blocks the asyncio event loop.

Public face: `submit(request) -> RequestStream` (an async iterator of SequenceUpdate),
`RequestStream.cancel()`, and `abort_all()` for shutdown.

Every iteration of the loop (one forward step):
1. reads new and cancelled requests; a cancelled request's slots are freed here;
2. admits waiting requests, by priority then arrival, while the KV cache has a free slot for
   each of their n sequences (see kv_cache.py for why slots);
3. builds one step: a decode token for every running sequence, then prompt chunks of the
   sequences still in prefill (at most `prefill_chunk` tokens each, cut at fixed positions so a
   prompt is computed the same way whatever the batch), up to `step_tokens` tokens in all, so a
   long prompt is spread over several steps and never freezes the running streams;
4. runs it, samples every row that needs a token in one batched call and hands new text to the
   streams. A request with n > 1 prefills once; its other sequences copy the prompt's cache.
"""
from __future__ import annotations

import asyncio
import bisect
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

import torch

from service.engine.detokenizer import Decoder, IncrementalDetokenizer
from service.engine.logprobs import prompt_logprobs, token_logprobs
from service.engine.runner import ModelRunner
from service.engine.sampler import SamplingRow, sample, sequence_seed
from service.engine.stop import StopStringMatcher
from service.engine.types import (
    Finish,
    FinishReason,
    GenerationRequest,
    SequenceUpdate,
    StepEntry,
    TokenLogprob,
)
from service.errors import InvalidRequest, NotReady, QueueFull

log = logging.getLogger(__name__)

_END = object()


class RequestStream:
    """The asyncio side of one request: updates pushed by the engine thread, read by a servicer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, engine: GenerationEngine) -> None:
        self._loop = loop
        self._engine = engine
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._done = False
        # When the engine admitted the request to the running batch (time.monotonic()).
        self.admitted_at: float | None = None

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
class StepStats:
    """Running totals of the engine's steps, written by the engine thread only (readers may see
    one step's fields half updated; fine for metrics)."""

    steps: int = 0
    # Tokens run through the model: decode tokens plus prompt chunk tokens.
    tokens: int = 0
    # Time in the model's forward pass, and in whole steps (forward, sampling, emitting).
    forward_seconds: float = 0.0
    step_seconds: float = 0.0


@dataclass(eq=False)
class _Sequence:
    request: GenerationRequest
    stream: RequestStream
    index: int
    slot: int
    row: SamplingRow
    detokenizer: IncrementalDetokenizer
    stops: StopStringMatcher
    deadline: float | None
    # The sequence whose prefill this one shares (n > 1), until it has been copied.
    leader: _Sequence | None = None
    # Positions of this sequence in its cache slot.
    cached: int = 0
    # The last sampled token, fed at the next step.
    next_input: int | None = None
    text: str = ""
    emitted: int = 0
    unsent_ids: list[int] = field(default_factory=list)
    unsent_logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None
    finished: bool = False

    @property
    def prefilling(self) -> bool:
        return self.next_input is None and self.leader is None


class GenerationEngine:
    def __init__(
        self,
        runner: ModelRunner,
        tokenizer: Decoder,
        eos_token_ids: frozenset[int],
        *,
        max_running: int = 16,
        max_waiting: int = 256,
        step_tokens: int = 160,
        prefill_chunk: int = 128,
    ) -> None:
        """`max_running` must not exceed the runner's slots; `step_tokens` bounds the tokens of
        one forward step (decode tokens plus prompt chunks; one chunk always goes)."""
        self._runner = runner
        self._tokenizer = tokenizer
        self._eos = eos_token_ids
        self._max_running = max_running
        self._max_waiting = max_waiting
        self._step_tokens = step_tokens
        self._prefill_chunk = prefill_chunk
        self._inbox: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
        # In admission order: by priority, then arrival.
        self._waiting: list[tuple[GenerationRequest, RequestStream]] = []
        self._running: list[_Sequence] = []
        self._admission = threading.Lock()
        self._not_admitted = 0
        self.stats = StepStats()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="tokenwire-engine", daemon=True)

    # asyncio side ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def abort_all(self) -> None:
        """Ends every running and waiting request at the engine's next iteration: each
        unfinished sequence gets a last update with what it has and FinishReason.ABORTED."""
        self._inbox.put(("abort", None))

    def stop(self) -> None:
        self._stopping = True
        self._inbox.put(("stop", None))
        self._thread.join(timeout=10)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def waiting_count(self) -> int:
        """Requests submitted and not yet admitted (the queue length)."""
        return self._not_admitted

    @property
    def running_count(self) -> int:
        """Sequences in the running batch."""
        return len(self._running)

    def submit(self, request: GenerationRequest) -> RequestStream:
        """Queues a validated request. Raises QueueFull when the waiting queue is at its limit."""
        if not self.alive:
            raise NotReady("The generation engine is not running.")
        if request.n > self._max_running:
            raise InvalidRequest(
                f"`n` must be at most {self._max_running} on this worker (its parallel sequences), "
                f"got {request.n}.",
                field="sampling.n",
            )
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
                started = time.perf_counter()
                try:
                    self._step()
                except Exception as error:  # a failed forward pass fails its batch, not the engine
                    log.exception("generation step failed")
                    self._fail_running(error)
                self.stats.steps += 1
                self.stats.step_seconds += time.perf_counter() - started
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
                bisect.insort_right(self._waiting, payload, key=lambda item: item[0].priority)  # type: ignore[arg-type]
            elif kind == "cancel":
                self._cancel(payload)  # type: ignore[arg-type]
            elif kind == "abort":
                self._abort_all()

    def _cancel(self, stream: RequestStream) -> None:
        before = len(self._waiting)
        self._waiting = [item for item in self._waiting if item[1] is not stream]
        if len(self._waiting) != before:
            with self._admission:
                self._not_admitted -= 1
        for seq in self._running:
            if seq.stream is stream:
                self._runner.release(seq.slot)
        self._running = [seq for seq in self._running if seq.stream is not stream]

    def _abort_all(self) -> None:
        for request, stream in self._waiting:
            for index in range(request.n):
                stream._push(SequenceUpdate(index, "", (), Finish(FinishReason.ABORTED)))
            stream._push(_END)
        with self._admission:
            self._not_admitted -= len(self._waiting)
        self._waiting.clear()
        for seq in self._running:
            self._emit(seq, self._append_text(seq, seq.detokenizer.flush()) or Finish(FinishReason.ABORTED))
            self._runner.release(seq.slot)
        self._running = []

    def _admit(self) -> None:
        while self._waiting and self._waiting[0][0].n <= min(
            self._runner.free_slots, self._max_running - len(self._running)
        ):
            request, stream = self._waiting.pop(0)
            with self._admission:
                self._not_admitted -= 1
            stream.admitted_at = time.monotonic()
            self._running.extend(self._new_sequences(request, stream))

    def _new_sequences(self, request: GenerationRequest, stream: RequestStream) -> list[_Sequence]:
        stopping = request.stopping
        deadline = time.monotonic() + stopping.time_limit_s if stopping.time_limit_s else None
        banned = frozenset() if stopping.ignore_eos else self._eos
        banned = (banned | stopping.stop_token_ids) if stopping.min_new_tokens else frozenset()
        sequences: list[_Sequence] = []
        for i in range(request.n):
            sequences.append(_Sequence(
                request=request,
                stream=stream,
                index=i,
                slot=self._runner.allocate(),
                row=SamplingRow(
                    params=request.sampling,
                    generator=torch.Generator().manual_seed(sequence_seed(request.seed, i)),
                    prompt_ids=request.prompt_ids,
                    banned_ids=banned,
                    constraint=request.constraint() if request.constraint else None,
                ),
                detokenizer=IncrementalDetokenizer(self._tokenizer, request.skip_special_tokens),
                stops=StopStringMatcher(stopping.stop_strings, stopping.include_stop_string),
                deadline=deadline,
                leader=sequences[0] if sequences else None,
            ))
        if request.prompt_logprobs is not None:
            sequences[0].prompt_logprobs = []
        return sequences

    def _step(self) -> None:
        entries: list[StepEntry] = []
        owners: list[_Sequence] = []
        # Decode tokens first, in slot order: the runner reads the cache in place when the
        # rows line up with the slots.
        for seq in sorted(self._running, key=lambda s: s.slot):
            if seq.next_input is not None:
                entries.append(StepEntry(seq.slot, [seq.next_input], seq.cached))
                owners.append(seq)
        budget = self._step_tokens - len(entries)
        chunks = 0
        for seq in self._running:
            if not seq.prefilling:
                continue
            prompt = seq.request.prompt_ids
            chunk = list(prompt[seq.cached : seq.cached + self._prefill_chunk])
            if chunks and len(chunk) > budget:
                break
            last = seq.cached + len(chunk) == len(prompt)
            keep = len(chunk) if seq.prompt_logprobs is not None else int(last)
            entries.append(StepEntry(seq.slot, chunk, seq.cached, logits_for=keep))
            owners.append(seq)
            budget -= len(chunk)
            chunks += 1
        forward_started = time.perf_counter()
        logits = self._runner.step(entries)
        self.stats.forward_seconds += time.perf_counter() - forward_started
        self.stats.tokens += sum(len(entry.token_ids) for entry in entries)

        to_sample: list[_Sequence] = []
        rows: list[int] = []
        offset = 0
        for entry, seq in zip(entries, owners):
            seq.cached += len(entry.token_ids)
            if seq.prompt_logprobs is not None and seq.next_input is None:
                seq.prompt_logprobs.extend(prompt_logprobs(
                    logits[offset : offset + entry.logits_for], seq.request.prompt_ids, entry.start,
                    seq.request.prompt_logprobs or 0,
                ))
            offset += entry.logits_for
            if seq.next_input is None and seq.cached < len(seq.request.prompt_ids):
                continue  # more of the prompt to go
            row = offset - 1
            for follower in self._followers(seq):
                self._runner.copy_prefix(seq.slot, follower.slot, seq.cached)
                follower.cached, follower.leader = seq.cached, None
                follower.prompt_logprobs = seq.prompt_logprobs
                to_sample.append(follower)
                rows.append(row)
            to_sample.append(seq)
            rows.append(row)
        if to_sample:
            self._sample_and_advance(logits[torch.tensor(rows, device=logits.device)], to_sample)

    def _followers(self, seq: _Sequence) -> list[_Sequence]:
        """The other sequences of seq's request waiting for its prefill (none after it)."""
        if seq.next_input is not None or seq.index != 0:
            return []
        return [s for s in self._running if s.leader is seq]

    def _sample_and_advance(self, logits: torch.Tensor, sequences: list[_Sequence]) -> None:
        tokens = sample(logits, [seq.row for seq in sequences])
        wanted = [seq.request.logprobs for seq in sequences]
        if any(count is not None for count in wanted):
            scored = token_logprobs(logits, tokens, [count or 0 for count in wanted])
            for seq, logprob in zip(sequences, scored):
                if seq.request.logprobs is not None:
                    seq.unsent_logprobs.append(logprob)
        ended = set()
        for seq, token in zip(sequences, tokens):
            if self._advance(seq, token):
                ended.add(seq)
                self._runner.release(seq.slot)
            else:
                seq.next_input = token
        if ended:
            self._running = [seq for seq in self._running if seq not in ended]

    def _advance(self, seq: _Sequence, token: int) -> bool:
        """Adds a sampled token, emits what can be emitted; returns True when the sequence ended."""
        stopping = seq.request.stopping
        seq.row.output_ids.append(token)
        seq.unsent_ids.append(token)
        finish: Finish | None = None
        constraint = seq.row.constraint
        if constraint is not None:
            constraint.accept(token)
        if token in stopping.stop_token_ids or (token in self._eos and not stopping.ignore_eos):
            finish = Finish(FinishReason.STOP, stop_token_id=token)
        elif constraint is not None and constraint.is_terminated():
            finish = self._append_text(seq, seq.detokenizer.push(token)) or Finish(FinishReason.STOP)
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
        if len(seq.row.output_ids) < seq.request.stopping.min_new_tokens:
            return None  # as in vLLM, stop strings count from min_new_tokens on, like stop tokens
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
        seq.stream._push(
            SequenceUpdate(
                seq.index,
                text,
                tuple(seq.unsent_ids),
                finish,
                logprobs=tuple(seq.unsent_logprobs),
                prompt_logprobs=tuple(seq.prompt_logprobs) if seq.prompt_logprobs is not None else None,
            )
        )
        seq.prompt_logprobs = None
        seq.unsent_ids.clear()
        seq.unsent_logprobs.clear()
        if finish is not None:
            seq.finished = True
            if all(s.finished for s in self._running if s.stream is seq.stream):
                seq.stream._push(_END)

    def _fail_running(self, error: Exception) -> None:
        for stream in {id(s.stream): s.stream for s in self._running}.values():
            stream._push(error)
        for seq in self._running:
            self._runner.release(seq.slot)
        self._running = []
