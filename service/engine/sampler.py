"""Next-token selection for a batch of rows, each with its own parameters and random generator.

Penalties and logit bias touch a few token ids per row; the filtering (top-k, top-p, min-p) and
the draw run as batched tensor operations. Each row draws its uniform number from its own
seeded generator and samples by inverse CDF, so a row's tokens do not depend on which other
rows share the batch.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

import torch

from service.engine.types import SamplingParams, TokenConstraint


def sequence_seed(seed: int, index: int) -> int:
    """The generator seed of sequence `index` of a request seeded with `seed`: the seed itself for
    the first (so n=1 draws what the first of n does), a hash of both for the others. Not
    seed + index: then the sequences of nearby seeds would be the same, shifted by one."""
    if index == 0:
        return seed % 2**63
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 2**63


@dataclass
class SamplingRow:
    params: SamplingParams
    generator: torch.Generator
    prompt_ids: tuple[int, ...]
    output_ids: list[int] = field(default_factory=list)
    # Tokens that may not be chosen yet (EOS and stop tokens before min_new_tokens).
    banned_ids: frozenset[int] = frozenset()
    # Grammar state under constrained decoding: only the tokens it allows can be drawn.
    constraint: TokenConstraint | None = None


def _apply_penalties(logits: torch.Tensor, rows: list[SamplingRow]) -> None:
    """In place: repetition (multiplicative, prompt and output), presence and frequency
    (additive, output only, OpenAI semantics), logit bias, banned tokens. Each kind is gathered
    over all rows first and applied at once: two small host-to-device copies per kind, not some
    per row, and no synchronisation with the device."""
    repeated = _Touches()
    penalized = _Touches()
    biased = _Touches()
    banned = _Touches()
    for i, row in enumerate(rows):
        p = row.params
        if p.repetition_penalty != 1.0:
            for token in sorted(set(row.prompt_ids) | set(row.output_ids)):
                repeated.add(i, token, p.repetition_penalty)
        if row.output_ids and (p.presence_penalty or p.frequency_penalty):
            for token, count in sorted(Counter(row.output_ids).items()):
                penalized.add(i, token, p.presence_penalty, p.frequency_penalty, count)
        for token, bias in p.logit_bias.items():
            biased.add(i, token, bias)
        for token in row.banned_ids:
            banned.add(i, token)
    device = logits.device
    if repeated:
        where, (penalty,) = repeated.tensors(device)
        values = logits[where]
        logits[where] = torch.where(values > 0, values / penalty, values * penalty)
    if penalized:
        where, (presence, frequency, count) = penalized.tensors(device)
        logits[where] -= presence + frequency * count
    if biased:
        where, (bias,) = biased.tensors(device)
        logits[where] += bias
    if banned:
        logits[banned.tensors(device)[0]] = float("-inf")


class _Touches:
    """(row, token) positions of the logits, each with float values, gathered as lists."""

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.tokens: list[int] = []
        self.values: list[tuple[float, ...]] = []

    def __bool__(self) -> bool:
        return bool(self.rows)

    def add(self, row: int, token: int, *values: float) -> None:
        self.rows.append(row)
        self.tokens.append(token)
        self.values.append(values)

    def tensors(self, device: torch.device) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]:
        """The (rows, tokens) index and a float32 tensor per value, moved in one copy."""
        index = _to_device(torch.tensor([self.rows, self.tokens]), device)
        values = _to_device(torch.tensor(self.values, dtype=torch.float32).reshape(len(self.rows), -1), device)
        return (index[0], index[1]), tuple(values.unbind(1))


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`; to a GPU from pinned memory, so that the host does not wait."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _apply_constraints(logits: torch.Tensor, rows: list[SamplingRow]) -> None:
    """In place: tokens the rows' grammars do not allow next get -inf."""
    constrained = [i for i, row in enumerate(rows) if row.constraint is not None]
    if not constrained:
        return
    vocab = logits.shape[-1]
    bitmask = torch.full((len(rows), (vocab + 31) // 32), -1, dtype=torch.int32)
    for i in constrained:
        rows[i].constraint.fill_bitmask(bitmask, i)  # type: ignore[union-attr]
    bits = (bitmask.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1
    allowed = _to_device(bits.flatten(1)[:, :vocab].bool(), logits.device)
    logits.masked_fill_(~allowed, float("-inf"))


def sample(logits: torch.Tensor, rows: list[SamplingRow]) -> list[int]:
    """Picks one token per row of `logits` ([rows, vocab]) and returns the token ids."""
    logits = logits.float().clone()
    _apply_penalties(logits, rows)
    _apply_constraints(logits, rows)
    greedy = [row.params.greedy for row in rows]
    if all(greedy):
        return logits.argmax(dim=-1).tolist()

    device, vocab = logits.device, logits.shape[-1]

    def column(values: list[float]) -> torch.Tensor:
        return _to_device(torch.tensor(values, dtype=torch.float32).unsqueeze(1), device)

    temperature = column([row.params.temperature or 1.0 for row in rows])
    top_k = column([row.params.top_k or vocab for row in rows])
    top_p = column([row.params.top_p for row in rows])
    min_p = column([row.params.min_p for row in rows])

    sorted_logits, sorted_ids = (logits / temperature).sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=device).unsqueeze(0)
    sorted_logits = sorted_logits.masked_fill(ranks >= top_k, float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    # Top-p keeps the smallest prefix whose mass reaches top_p (always at least one token).
    mass_before = probs.cumsum(dim=-1) - probs
    drop = (mass_before >= top_p) | (probs < min_p * probs[:, :1])
    drop[:, 0] = False
    probs = probs.masked_fill(drop, 0.0)
    cdf = probs.cumsum(dim=-1)
    draws = _to_device(torch.stack([torch.rand((), generator=row.generator) for row in rows]), device)
    picked = torch.searchsorted(cdf, (draws * cdf[:, -1]).unsqueeze(1)).clamp_(max=vocab - 1)
    sampled = sorted_ids.gather(1, picked).squeeze(1)
    chosen = torch.where(_to_device(torch.tensor(greedy), device), logits.argmax(dim=-1), sampled)
    return chosen.tolist()
