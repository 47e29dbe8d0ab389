"""Plain data passed between the servicers and the engine (no gRPC, no torch)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    CONTEXT_LENGTH = "context_length"
    TIME_LIMIT = "time_limit"


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


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_ids: tuple[int, ...]
    sampling: SamplingParams
    stopping: StoppingParams
    n: int = 1
    seed: int = 0
    skip_special_tokens: bool = True


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
