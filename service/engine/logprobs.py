"""Log-probabilities of chosen tokens and their top alternatives, from raw model logits.

They describe the model's own distribution (before temperature, penalties or grammar masks), as
OpenAI and vLLM report them.
"""
from __future__ import annotations

import torch

from service.engine.types import TokenLogprob


class ScoredTokens:
    """The log-probabilities of one step's chosen tokens, kept as tensors by the scheduler thread
    (no copy to Python on its path) and turned into TokenLogprob by the output thread."""

    def __init__(self, logits: torch.Tensor, chosen: list[int], top_counts: list[int]) -> None:
        """`logits` [rows, vocab]; `chosen[row]` is row's token, scored with `top_counts[row]`
        alternatives."""
        logprobs = logits.float().log_softmax(dim=-1)
        self._chosen = chosen
        self._counts = top_counts
        self._chosen_lp = logprobs.gather(1, torch.tensor(chosen, device=logits.device).unsqueeze(1)).squeeze(1)
        k = max(top_counts, default=0)
        self._top = logprobs.topk(k, dim=-1) if k else (logprobs[:, :0], logprobs[:, :0])

    def rows(self) -> list[TokenLogprob]:
        chosen_lp, top_values, top_ids = self._chosen_lp.tolist(), self._top[0].tolist(), self._top[1].tolist()
        return [
            TokenLogprob(token_id=token, logprob=lp, top=tuple(zip(top_ids[row][:count], top_values[row][:count])))
            for row, (token, lp, count) in enumerate(zip(self._chosen, chosen_lp, self._counts))
        ]


def token_logprobs(logits: torch.Tensor, chosen: list[int], top_counts: list[int]) -> list[TokenLogprob]:
    """`logits` [rows, vocab]; one TokenLogprob per row for `chosen[row]` with `top_counts[row]`
    alternatives."""
    return ScoredTokens(logits, chosen, top_counts).rows()


def prompt_logprobs(
    logits: torch.Tensor, prompt_ids: tuple[int, ...], start: int, top_count: int
) -> list[TokenLogprob | None]:
    """Logprobs of the prompt tokens predicted by a chunk of prompt positions: `logits` rows are
    positions `start ..`, and position i predicts token i + 1. The first prompt token has no
    prediction: it gets None, in the chunk that starts the prompt."""
    following = list(prompt_ids[start + 1 : start + 1 + logits.shape[0]])
    scored: list[TokenLogprob | None] = [None] if start == 0 else []
    if following:
        scored.extend(token_logprobs(logits[: len(following)], following, [top_count] * len(following)))
    return scored
