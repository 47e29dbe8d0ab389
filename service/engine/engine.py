"""The generation engine: continuous batching over a paged KV cache in a scheduler thread, fed and
drained through thread-safe queues, so a forward pass never blocks the asyncio event loop.

Public face: `submit(request) -> RequestStream` (an async iterator of SequenceUpdate, whose
`admitted()` says when the request joined the running batch and how much of its prompt came from
the prefix cache), `RequestStream.cancel()`, and `abort_all()` for shutdown.

The KV cache is a pool of fixed-size blocks (block_pool.py); a sequence holds the blocks of its
block table. Every iteration of the loop (one forward step):
1. reads new and cancelled requests; a cancelled request's blocks are released here;
2. admits waiting sequences, by priority then arrival, while there is room for another sequence
   (`max_running`) and free blocks for its prompt. A sequence first takes the longest run of
   cached blocks that starts its tokens (prefix caching) and computes only the rest; one whose
   next blocks another sequence is computing right now waits for them rather than computing them
   twice. The n > 1 sequences of a request join together: the first computes the prompt, the
   others then share all its blocks, the last one (partly filled) copied by whichever writes to
   it first. When a more urgent sequence cannot be admitted, the least urgent running ones are
   preempted for it;
3. builds one step: a token for every sequence that is decoding, then prompt chunks (at most
   `prefill_chunk` tokens, cut at fixed positions) up to `step_tokens` tokens in all, so a long
   prompt is spread over several steps and never freezes the running streams. A decoding
   sequence whose last block is full gets a new one; when none is free, the least urgent, newest
   sequence is preempted: its blocks are released (its computed blocks stay cached) and it waits
   again, at the front of its priority, to be recomputed and go on where it was;
4. runs it, registers the blocks it filled in the prefix cache, samples every row that needs a
   token in one batched call, decides which sequences their tokens end (stop tokens, EOS,
   max_new_tokens, time limits, grammars) and hands the step's tokens to the output thread
   (output.py), which detokenizes them, matches stop strings and updates the streams while the
   next step runs.

A preempted sequence resumes with exactly the tokens it would have produced, and a cache hit
changes no output bit: the runner computes every token's keys and values the same way, as part
of a prompt or as a decode token, alone or in any batch (llama.py), and a sequence keeps its
sampler state, and its output its detokenizer and stop-string state, while it waits, so nothing is
streamed twice.
"""
from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import torch

from service.engine.block_pool import BlockPool, extend_hashes
from service.engine.detokenizer import Decoder
from service.engine.logprobs import ScoredTokens, prompt_logprobs
from service.engine.output import Emitted, OutputThread, RequestStream, SequenceOutput, StepOutput
from service.engine.runner import ModelRunner
from service.engine.sampler import SamplingRow, sample, sequence_seed
from service.engine.types import Admission, Finish, FinishReason, GenerationRequest, StepEntry, TokenLogprob
from service.errors import InvalidRequest, KvCacheExceeded, NotReady, QueueFull

log = logging.getLogger(__name__)

# Free blocks kept back when admitting beside running sequences, as a share of the pool, so that a
# new prompt does not take the blocks the decoding sequences need next.
_ADMISSION_HEADROOM = 0.01


@dataclass
class StepStats:
    """Running totals of the engine, written by the engine thread only (readers may see one
    step's fields half updated; fine for metrics)."""

    steps: int = 0
    # Tokens run through the model: decode tokens plus prompt chunk tokens.
    tokens: int = 0
    # Time in the model's forward pass, and in whole steps (forward, sampling, emitting).
    forward_seconds: float = 0.0
    step_seconds: float = 0.0
    # Prompt tokens of admitted requests looked up in the prefix cache, and those found there.
    prefix_queried_tokens: int = 0
    prefix_hit_tokens: int = 0
    preemptions: int = 0


@dataclass(frozen=True)
class KvCacheStats:
    """The KV cache after the engine's last step."""

    blocks: int
    block_size: int
    # Blocks held by running sequences, and cached blocks kept for reuse.
    used_blocks: int = 0
    cached_blocks: int = 0
    # Token positions the running sequences fill (or are about to), each shared block once.
    held_tokens: int = 0

    @property
    def usage(self) -> float:
        return self.used_blocks / self.blocks


@dataclass(eq=False)
class _Sequence:
    request: GenerationRequest
    stream: RequestStream
    index: int
    # Submission order, then index: with the priority, the order of admission and of preemption.
    arrival: tuple[int, int]
    row: SamplingRow
    output: SequenceOutput
    deadline: float | None
    # The prompt, then the generated tokens. The keys and values of tokens[:computed] are in the
    # blocks of `blocks`; the others go through the model at the next steps.
    tokens: list[int]
    blocks: list[int] = field(default_factory=list)
    computed: int = 0
    # Chained hashes of the full blocks of `tokens` (as far as known), and how many of the leading
    # blocks are registered in the prefix cache.
    hashes: list[bytes] = field(default_factory=list)
    registered: int = 0
    # Identifies the sequence to the runner while it runs (a new one at every admission).
    handle: int = 0
    # The first sequence of the request, whose prompt this one shares once it is computed.
    leader: _Sequence | None = None
    # Collected while the prompt is computed, when the request asked for them; handed to the
    # output with the first token.
    prompt_logprobs: list[TokenLogprob | None] | None = None

    @property
    def priority(self) -> tuple[int, tuple[int, int]]:
        """Lower is more urgent: the request's priority, then arrival."""
        return self.request.priority, self.arrival

    @property
    def pending(self) -> int:
        """Tokens whose keys and values are still to compute."""
        return len(self.tokens) - self.computed


class GenerationEngine:
    def __init__(
        self,
        runner: ModelRunner,
        tokenizer: Decoder,
        eos_token_ids: frozenset[int],
        *,
        sampled_vocab: int | None = None,
        max_running: int = 16,
        max_waiting: int = 256,
        step_tokens: int = 160,
        prefill_chunk: int = 128,
        prefix_caching: bool = True,
        cache_root: bytes = b"",
    ) -> None:
        """`step_tokens` bounds the tokens of one forward step (decode tokens plus prompt chunks;
        one chunk always goes); `prefill_chunk` must be a multiple of the runner's block size.
        `cache_root` starts the chain of block hashes: it names what besides the tokens decides
        the keys and values (block_pool.chain_root). Only ids below `sampled_vocab` (by default
        all the logits') are ever sampled or scored."""
        if prefill_chunk % runner.block_size:
            raise ValueError(f"prefill_chunk {prefill_chunk} is not a multiple of the block size {runner.block_size}")
        self._runner = runner
        self._tokenizer = tokenizer
        self._eos = eos_token_ids
        self._sampled_vocab = sampled_vocab
        self.max_running = max_running
        self._max_waiting = max_waiting
        self._step_tokens = step_tokens
        self._prefill_chunk = prefill_chunk
        self._pool = BlockPool(runner.blocks, runner.block_size, caching=prefix_caching and runner.shares_blocks)
        self._root = cache_root
        self._headroom = max(1, int(runner.blocks * _ADMISSION_HEADROOM))
        self._inbox: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
        # In admission order: by priority, then arrival.
        self._waiting: list[_Sequence] = []
        self._running: list[_Sequence] = []
        self._arrivals = itertools.count()
        self._handles = itertools.count(1)
        self._admission = threading.Lock()
        self._not_admitted = 0
        self.stats = StepStats()
        self.kv_cache = KvCacheStats(blocks=runner.blocks, block_size=runner.block_size)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="tokenwire-engine", daemon=True)
        self._output = OutputThread(lambda sequence: self._inbox.put(("stopped", sequence)))

    # asyncio side ---------------------------------------------------------------------------

    @property
    def max_sequence_tokens(self) -> int:
        """The longest sequence (prompt and completion) the KV cache can hold."""
        return self._pool.blocks * self._pool.block_size

    @property
    def prefix_caching(self) -> bool:
        return self._pool.caching

    def start(self) -> None:
        self._output.start()
        self._thread.start()

    def abort_all(self) -> None:
        """Ends every running and waiting request at the engine's next iteration: each
        unfinished sequence gets a last update with what it has and FinishReason.ABORTED."""
        self._inbox.put(("abort", None))

    def stop(self) -> None:
        self._stopping = True
        self._inbox.put(("stop", None))
        self._thread.join(timeout=10)
        self._output.stop()

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
        """Queues a validated request. Raises QueueFull when the waiting queue is at its limit, and
        InvalidRequest or KvCacheExceeded for what this engine can never run (the servicer checks
        both first, naming the request's fields)."""
        if not self.alive:
            raise NotReady("The generation engine is not running.")
        if request.n > self.max_running:
            raise InvalidRequest(
                f"`n` must be at most {self.max_running} on this worker (its parallel sequences), got {request.n}."
            )
        prompt, completion = len(request.prompt_ids), request.stopping.max_new_tokens
        if prompt + completion > self.max_sequence_tokens:
            raise KvCacheExceeded(kv_cache_exceeded_message(self.max_sequence_tokens, prompt, completion))
        with self._admission:
            if self._not_admitted >= self._max_waiting:
                raise QueueFull(
                    f"The server is at capacity ({self._max_waiting} requests waiting); retry shortly.",
                    retry_after_s=1.0,
                )
            self._not_admitted += 1
        stream = RequestStream(asyncio.get_running_loop(), self, request.n)
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
            self._publish_kv_cache()
        for stream in {id(s.stream): s.stream for s in [*self._running, *self._waiting]}.values():
            stream._push(NotReady("The worker is shutting down."))

    def _read_inbox(self, block: bool) -> None:
        while True:
            try:
                kind, payload = self._inbox.get(block=block)
            except queue.Empty:
                return
            block = False
            if kind == "submit":
                for sequence in self._new_sequences(*payload):  # type: ignore[misc]
                    self._enqueue(sequence)
            elif kind == "cancel":
                self._cancel(payload)  # type: ignore[arg-type]
            elif kind == "stopped":  # a stop string ended it
                self._drop(payload)  # type: ignore[arg-type]
            elif kind == "abort":
                self._abort_all()

    def _enqueue(self, seq: _Sequence) -> None:
        bisect.insort_right(self._waiting, seq, key=lambda s: s.priority)

    def _new_sequences(self, request: GenerationRequest, stream: RequestStream) -> list[_Sequence]:
        stopping = request.stopping
        deadline = time.monotonic() + stopping.time_limit_s if stopping.time_limit_s else None
        banned = frozenset() if stopping.ignore_eos else self._eos
        banned = (banned | stopping.stop_token_ids) if stopping.min_new_tokens else frozenset()
        arrival = next(self._arrivals)
        sequences = [
            _Sequence(
                request=request,
                stream=stream,
                index=i,
                arrival=(arrival, i),
                row=SamplingRow(
                    params=request.sampling,
                    generator=torch.Generator().manual_seed(sequence_seed(request.seed, i)),
                    prompt_ids=request.prompt_ids,
                    banned_ids=banned,
                    constraint=request.constraint() if request.constraint else None,
                ),
                output=SequenceOutput.create(request, stream, i, self._tokenizer),
                deadline=deadline,
                tokens=list(request.prompt_ids),
            )
            for i in range(request.n)
        ]
        for sequence in sequences:
            sequence.output.sequence = sequence
        if request.prompt_logprobs is not None:
            sequences[0].prompt_logprobs = []
        return sequences

    def _cancel(self, stream: RequestStream) -> None:
        if not stream._joined and any(seq.stream is stream for seq in self._waiting):
            with self._admission:
                self._not_admitted -= 1
        self._waiting = [seq for seq in self._waiting if seq.stream is not stream]
        for seq in [seq for seq in self._running if seq.stream is stream]:
            self._leave(seq)

    def _drop(self, seq: _Sequence) -> None:
        """Stops a sequence wherever it is (a stop string ended it)."""
        if seq in self._running:
            self._leave(seq)
        self._waiting = [s for s in self._waiting if s is not seq]

    def _abort_all(self) -> None:
        for seq in self._waiting:
            if not seq.stream._joined:
                with self._admission:
                    self._not_admitted -= 1
                seq.stream._joined = True
        aborted = Finish(FinishReason.ABORTED)
        self._output.put(StepOutput([Emitted(seq.output, None, aborted) for seq in [*self._running, *self._waiting]]))
        for seq in list(self._running):
            self._leave(seq)
        self._waiting = []

    def _leave(self, seq: _Sequence) -> None:
        """Takes a sequence out of the running batch and lets go of its blocks."""
        self._running.remove(seq)
        self._pool.release(seq.blocks)
        self._runner.release(seq.handle)
        seq.blocks, seq.computed, seq.registered = [], 0, 0

    def _preempt(self, seq: _Sequence) -> None:
        """Frees a running sequence's blocks; it waits again and will be recomputed (from its
        cached blocks, as far as they are still cached) and go on where it was. Sequences waiting
        to share its prompt wait again too, on their own."""
        for follower in self._followers(seq):
            self._preempt(follower)
        self._leave(seq)
        seq.leader = None
        if seq.prompt_logprobs is not None:
            seq.prompt_logprobs = []  # its prompt is computed again from the start
        self._enqueue(seq)
        self.stats.preemptions += 1
        log.debug("preempted sequence %d of %s", seq.index, seq.request.request_id)

    def _followers(self, seq: _Sequence) -> list[_Sequence]:
        return [s for s in self._running if s.leader is seq]

    # admission -------------------------------------------------------------------------------

    def _admit(self) -> None:
        if not self._waiting:
            return
        computing = self._blocks_being_computed()
        index = 0
        while index < len(self._waiting):
            seq = self._waiting[index]
            if seq.prompt_logprobs is None:  # prompt logprobs need every prompt position's logits
                extend_hashes(seq.hashes, seq.tokens, self._pool.block_size, self._root, len(seq.tokens))
            # At least the last token is computed: its logits give the next token.
            reusable = seq.hashes[: (len(seq.tokens) - 1) // self._pool.block_size] if self._pool.caching else []
            hits = self._pool.cached_prefix(reusable)
            if hits < len(reusable) and reusable[hits] in computing:
                index += 1  # its next blocks are being computed: wait for them, let others go
                continue
            needed = self._pool.blocks_for(len(seq.tokens)) - hits
            # Cached blocks that nothing holds count as free until this sequence holds them.
            taken = needed + self._pool.idle_count(reusable[:hits])
            room = self._pool.free_blocks - (self._headroom if self._running else 0)
            followers = self._waiting_siblings(seq)
            if len(self._running) + 1 + len(followers) > self.max_running or taken > room:
                if self._preempt_for(seq):
                    continue
                break
            self._waiting = [s for s in self._waiting if s is not seq and s not in followers]
            self._start(seq, reusable[:hits], needed)
            for follower in followers:
                follower.leader, follower.handle = seq, next(self._handles)
                self._running.append(follower)
            computing.update(seq.hashes[seq.computed // self._pool.block_size :])

    def _waiting_siblings(self, seq: _Sequence) -> list[_Sequence]:
        """The other sequences of a request that has not joined yet, when `seq` is its first
        and the runner lets sequences share blocks: they join with it and share its prompt."""
        if seq.index != 0 or seq.stream._joined or seq.request.n == 1 or not self._runner.shares_blocks:
            return []
        return [s for s in self._waiting if s.stream is seq.stream and s is not seq]

    def _blocks_being_computed(self) -> set[bytes]:
        """Hashes of the full blocks that running sequences are computing now."""
        return {h for seq in self._running for h in seq.hashes[seq.computed // self._pool.block_size :]}

    def _preempt_for(self, seq: _Sequence) -> bool:
        """Preempts the least urgent, newest running sequence when it is less urgent than `seq`
        (by the request priority, not arrival). Returns whether it did."""
        if not self._running:
            return False
        victim = max(self._running, key=lambda s: s.priority)
        if victim.request.priority <= seq.request.priority:
            return False
        self._preempt(victim)
        return True

    def _start(self, seq: _Sequence, cached: list[bytes], new_blocks: int) -> None:
        block_size = self._pool.block_size
        seq.blocks = self._pool.hold_cached(cached) + self._pool.allocate(new_blocks)
        seq.registered = len(cached)
        seq.computed = len(cached) * block_size
        seq.handle = next(self._handles)
        self._running.append(seq)
        stream = seq.stream
        if not stream._joined:
            stream._joined = True
            with self._admission:
                self._not_admitted -= 1
            if self._pool.caching:
                self.stats.prefix_queried_tokens += len(seq.request.prompt_ids)
                self.stats.prefix_hit_tokens += seq.computed
            stream._push(Admission(cached_tokens=seq.computed, admitted_at=time.monotonic()))

    # steps ----------------------------------------------------------------------------------

    def _step(self) -> None:
        entries: list[StepEntry] = []
        owners: list[_Sequence] = []
        # Decode tokens first, the most urgent sequences getting blocks first.
        for seq in sorted((s for s in self._running if s.pending == 1 and s.leader is None), key=lambda s: s.priority):
            if seq not in self._running or not self._ensure_block(seq):
                continue  # preempted for room
            entries.append(self._entry(seq, seq.computed + 1))
            owners.append(seq)
        budget = self._step_tokens - len(entries)
        chunks = 0
        for seq in sorted((s for s in self._running if s.pending > 1 and s.leader is None), key=lambda s: s.priority):
            chunk = self._prefill_chunk
            end = min(len(seq.tokens), (seq.computed // chunk + 1) * chunk)
            while end < len(seq.tokens) and end + chunk - seq.computed <= budget:
                end = min(len(seq.tokens), end + chunk)  # more whole chunks while the budget allows
            if chunks and end - seq.computed > budget:
                break
            entries.append(self._entry(seq, end))
            owners.append(seq)
            budget -= end - seq.computed
            chunks += 1
        if not entries:
            return
        forward_started = time.perf_counter()
        logits = self._runner.step(entries)[..., : self._sampled_vocab]
        self.stats.forward_seconds += time.perf_counter() - forward_started
        self.stats.tokens += sum(len(entry.token_ids) for entry in entries)

        to_sample: list[_Sequence] = []
        rows: list[int] = []
        offset = 0
        for entry, seq in zip(entries, owners):
            if self._collects_prompt_logprobs(seq):
                seq.prompt_logprobs.extend(prompt_logprobs(  # type: ignore[union-attr]
                    logits[offset : offset + entry.logits_for], seq.request.prompt_ids, entry.start,
                    seq.request.prompt_logprobs or 0,
                ))
            offset += entry.logits_for
            seq.computed += len(entry.token_ids)
            self._register_full_blocks(seq)
            if seq.computed == len(seq.tokens):
                for follower in self._followers(seq):
                    self._fork(seq, follower)
                    to_sample.append(follower)
                    rows.append(offset - 1)
                to_sample.append(seq)
                rows.append(offset - 1)
        if to_sample:
            self._sample_and_advance(logits[torch.tensor(rows, device=logits.device)], to_sample)

    def _entry(self, seq: _Sequence, end: int) -> StepEntry:
        """The step entry that computes seq.tokens[computed:end]."""
        tokens = seq.tokens[seq.computed : end]
        if self._collects_prompt_logprobs(seq):
            logits_for = len(tokens)  # every prompt position predicts the next prompt token
        else:
            logits_for = int(end == len(seq.tokens))
        return StepEntry(seq.handle, seq.blocks, tokens, seq.computed, logits_for=logits_for)

    @staticmethod
    def _collects_prompt_logprobs(seq: _Sequence) -> bool:
        return seq.prompt_logprobs is not None and seq.computed < len(seq.request.prompt_ids)

    def _fork(self, leader: _Sequence, follower: _Sequence) -> None:
        """A follower takes the leader's computed prompt: it holds all its blocks too."""
        self._pool.share(leader.blocks)
        follower.blocks, follower.computed, follower.registered = list(leader.blocks), leader.computed, leader.registered
        follower.hashes = list(leader.hashes)
        follower.prompt_logprobs = leader.prompt_logprobs
        follower.leader = None

    def _ensure_block(self, seq: _Sequence) -> bool:
        """Gives a decoding sequence a block of its own for its next token: a new one when its
        last is full, a copy when its last is shared with its siblings. Preempts the least
        urgent, newest sequences while no block is free; False when `seq` itself was."""
        index = seq.computed // self._pool.block_size
        if index < len(seq.blocks) and not self._pool.is_shared(seq.blocks[index]):
            return True
        while self._pool.free_blocks == 0:
            victim = max((s for s in self._running if s.blocks), key=lambda s: s.priority)
            self._preempt(victim)
            if victim is seq:
                return False
        block = self._pool.allocate(1)[0]
        if index < len(seq.blocks):  # copy-on-write
            self._runner.copy_block(seq.blocks[index], block)
            self._pool.release([seq.blocks[index]])
            seq.blocks[index] = block
        else:
            seq.blocks.append(block)
        return True

    def _register_full_blocks(self, seq: _Sequence) -> None:
        """Puts the blocks that the last step filled into the prefix cache."""
        full = seq.computed // self._pool.block_size
        if not self._pool.caching or full <= seq.registered:
            return
        extend_hashes(seq.hashes, seq.tokens, self._pool.block_size, self._root, full * self._pool.block_size)
        for index in range(seq.registered, full):
            self._pool.register(seq.blocks[index], seq.hashes[index])
        seq.registered = full

    def _publish_kv_cache(self) -> None:
        block_size = self._pool.block_size
        # Only a sequence's last block has room it has not filled (or will not fill at this step).
        slack = {
            seq.blocks[-1]: max(0, len(seq.blocks) * block_size - max(len(seq.tokens), seq.computed))
            for seq in self._running
            if seq.blocks
        }
        self.kv_cache = KvCacheStats(
            blocks=self._pool.blocks,
            block_size=block_size,
            used_blocks=self._pool.used_blocks,
            cached_blocks=self._pool.cached_blocks,
            held_tokens=self._pool.used_blocks * block_size - sum(slack.values()),
        )

    def _sample_and_advance(self, logits: torch.Tensor, sequences: list[_Sequence]) -> None:
        tokens = sample(logits, [seq.row for seq in sequences])
        wanted = [seq.request.logprobs for seq in sequences]
        scored = None
        if any(count is not None for count in wanted):
            scored = ScoredTokens(logits, tokens, [count or 0 for count in wanted])
        emitted = []
        for row, (seq, token) in enumerate(zip(sequences, tokens)):
            finish = self._advance(seq, token)
            prompt_scores = None
            if seq.prompt_logprobs is not None:
                prompt_scores, seq.prompt_logprobs = tuple(seq.prompt_logprobs), None
            emitted.append(Emitted(seq.output, token, finish, row if wanted[row] is not None else None, prompt_scores))
            if finish is not None:
                self._leave(seq)
        self._output.put(StepOutput(emitted, scored))

    def _advance(self, seq: _Sequence, token: int) -> Finish | None:
        """Adds a sampled token; returns the end it brings, as far as tokens decide it (stop
        strings are the output thread's)."""
        stopping = seq.request.stopping
        seq.tokens.append(token)
        seq.row.output_ids.append(token)
        constraint = seq.row.constraint
        if constraint is not None:
            constraint.accept(token)
        if token in stopping.stop_token_ids or (token in self._eos and not stopping.ignore_eos):
            return Finish(FinishReason.STOP, stop_token_id=token)
        if constraint is not None and constraint.is_terminated():
            return Finish(FinishReason.STOP)
        produced = len(seq.row.output_ids)
        if produced >= stopping.min_new_tokens and seq.row.banned_ids:
            seq.row.banned_ids = frozenset()
        if produced >= stopping.max_new_tokens:
            return Finish(FinishReason.CONTEXT_LENGTH if stopping.max_new_tokens_is_context_limit else FinishReason.LENGTH)
        if seq.deadline is not None and time.monotonic() >= seq.deadline:
            return Finish(FinishReason.TIME_LIMIT)
        return None

    def _fail_running(self, error: Exception) -> None:
        failed = {id(s.stream): s.stream for s in self._running}
        for stream in failed.values():
            stream._push(error)
        for seq in list(self._running):
            self._leave(seq)
        self._waiting = [seq for seq in self._waiting if id(seq.stream) not in failed]


def kv_cache_exceeded_message(capacity: int, prompt_tokens: int, completion_tokens: int) -> str:
    return (
        f"This worker's KV cache holds {capacity} tokens per sequence. However, you requested "
        f"{prompt_tokens + completion_tokens} tokens ({prompt_tokens} in the prompt, {completion_tokens} for "
        f"the completion). Please reduce the length of the prompt or completion."
    )
