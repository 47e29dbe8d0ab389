"""Per-request timings of streamed generations, what a load of them adds up to (output tokens per
second, time to first token, time per output token), and the random prompts they are sent.

TPOT (time per output token) is a request's (end − first token) / (tokens − 1): its decode speed
once the first token is out, as vLLM's benchmarks define it.
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

# The APIs a load runs on (bench/clients.py): the worker's gRPC and the bridge's REST.
GRPC = "grpc"
REST = "rest"
APIS = (GRPC, REST)
API_LABELS = {GRPC: "gRPC GenerateStream", REST: "REST /v1/completions, streaming"}


@dataclass(frozen=True)
class RequestTiming:
    """One request, in seconds from its load's start: when it was sent, when its first token came,
    when its last one did, and how many output tokens it had (or why it failed)."""

    start: float
    first_token: float | None
    end: float
    tokens: int
    error: str | None = None

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start

    @property
    def tpot_s(self) -> float | None:
        if self.first_token is None or self.tokens < 2:
            return None
        return (self.end - self.first_token) / (self.tokens - 1)


@dataclass(frozen=True)
class LoadFigures:
    """A load's requests reduced: aggregate output tok/s over its wall time (first send to last
    token), and percentiles of TTFT and TPOT over the requests that did not fail."""

    requests: int
    errors: int
    output_tokens: int
    wall_s: float
    tok_per_s: float
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    tpot_p50_s: float | None
    tpot_p95_s: float | None


def percentile(values: Sequence[float], share: float) -> float | None:
    """The nearest-rank percentile (`share` in 0..1): a value that was measured, None for none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def summarize(timings: Sequence[RequestTiming]) -> LoadFigures:
    ok = [t for t in timings if t.error is None]
    tokens = sum(t.tokens for t in ok)
    wall = max((t.end for t in timings), default=0.0) - min((t.start for t in timings), default=0.0)
    ttfts = [t.ttft_s for t in ok if t.ttft_s is not None]
    tpots = [t.tpot_s for t in ok if t.tpot_s is not None]
    return LoadFigures(
        requests=len(timings),
        errors=len(timings) - len(ok),
        output_tokens=tokens,
        wall_s=wall,
        tok_per_s=tokens / wall if wall > 0 else 0.0,
        ttft_p50_s=percentile(ttfts, 0.5),
        ttft_p95_s=percentile(ttfts, 0.95),
        tpot_p50_s=percentile(tpots, 0.5),
        tpot_p95_s=percentile(tpots, 0.95),
    )


class PromptSource:
    """Random prompts of token ids from `vocab`, each starting with a token no earlier prompt of this
    source started with, so that no two share a prefix (the prefix cache cannot help) for the first
    len(vocab) prompts. Seeded: the same run sends the same prompts."""

    def __init__(self, vocab: range, seed: int = 0) -> None:
        if len(vocab) < 2:
            raise ValueError(f"a vocabulary of {len(vocab)} ids is too small for random prompts")
        self._vocab = vocab
        self._random = random.Random(seed)
        self._issued = 0

    def take(self, count: int, length: int) -> list[list[int]]:
        prompts = []
        for _ in range(count):
            if self._issued >= len(self._vocab):
                raise RuntimeError(f"more than {len(self._vocab)} prompts would repeat a first token")
            first = self._vocab[self._issued]
            self._issued += 1
            rest = [self._random.randrange(self._vocab.start, self._vocab.stop) for _ in range(length - 1)]
            prompts.append([first, *rest])
        return prompts
