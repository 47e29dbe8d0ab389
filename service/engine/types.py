"""Plain data passed between the servicers and the engine (no gRPC, no torch)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:
    import torch


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    CONTEXT_LENGTH = "context_length"
    TIME_LIMIT = "time_limit"
    # Ended by the worker (GenerationEngine.abort_all, at shutdown).
    ABORTED = "aborted"


@dataclass(frozen=True)
class SamplingParams:
    """Resolved sampling parameters (model defaults already applied). temperature 0 = greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class StoppingParams:
    max_new_tokens: int
    min_new_tokens: int = 0
    stop_strings: tuple[str, ...] = ()
    stop_token_ids: frozenset[int] = frozenset()
    include_stop_string: bool = False
    ignore_eos: bool = False
    time_limit_s: float | None = None
    # True when max_new_tokens was derived from the context window rather than asked for.
    max_new_tokens_is_context_limit: bool = False


class TokenConstraint(Protocol):
    """The grammar state of one sequence under constrained decoding (structured output, tools).

    The sampler asks it which tokens may come next, the engine tells it which one came."""

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Writes the allowed next tokens into row `row` of an int32 bitmask
        ([rows, ceil(vocab / 32)], bit j of word i = token 32 * i + j)."""

    def accept(self, token_id: int) -> None:
        """Advances the grammar past a sampled token."""

    def is_terminated(self) -> bool:
        """True once the grammar is complete (its stop token accepted)."""


@dataclass(frozen=True)
class TokenLogprob:
    """A token's log-probability under the model, with the most likely alternatives."""

    token_id: int
    logprob: float
    # (token id, logprob) of the most likely tokens at that position, most likely first.
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_ids: tuple[int, ...]
    sampling: SamplingParams
    stopping: StoppingParams
    n: int = 1
    seed: int = 0
    skip_special_tokens: bool = True
    # Log-probabilities of the sampled tokens with this many alternatives (None: none).
    logprobs: int | None = None
    # Log-probabilities of the prompt tokens (after the first) with this many alternatives.
    prompt_logprobs: int | None = None
    # Builds a fresh grammar state for each of the n sequences (None: unconstrained).
    constraint: Callable[[], TokenConstraint] | None = None
    # Lower values are served first (as vLLM's `priority`); equal priorities by arrival.
    priority: int = 0


@dataclass(frozen=True)
class StepEntry:
    """One sequence's share of a forward step: `token_ids` enter the sequence's cache at positions
    `start .. start + len(token_ids)`, in the blocks of its block table `blocks` (which covers
    them); the logits of the last `logits_for` of them come back. `sequence` identifies the
    sequence while it runs (runners that keep state per sequence key it so)."""

    sequence: int
    blocks: list[int]
    token_ids: list[int]
    start: int
    logits_for: int = 1


@dataclass(frozen=True)
class Admission:
    """A request has joined the running batch: `cached_tokens` of its prompt came from the prefix
    cache (computed by earlier requests), at `admitted_at` (time.monotonic())."""

    cached_tokens: int
    admitted_at: float


@dataclass(frozen=True)
class Finish:
    reason: FinishReason
    stop_string: str = ""
    stop_token_id: int | None = None


@dataclass(frozen=True)
class SequenceUpdate:
    """New output of one of a request's n sequences. `finish` is set on its last update only."""

    index: int
    text: str
    token_ids: tuple[int, ...]
    finish: Finish | None = None
    # One per token id when the request asked for logprobs.
    logprobs: tuple[TokenLogprob, ...] = ()
    # On a sequence's first update only, when the request asked for prompt logprobs: one entry
    # per prompt token, None for the first (nothing precedes it).
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
