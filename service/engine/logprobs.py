"""Log-probabilities of chosen tokens and their top alternatives, from raw model logits.

They describe the model's own distribution (before temperature, penalties or grammar masks), as
OpenAI and vLLM report them.
"""
from __future__ import annotations

import torch

from service.engine.types import TokenLogprob


def token_logprobs(logits: torch.Tensor, chosen: list[int], top_counts: list[int]) -> list[TokenLogprob]:
    """`logits` [rows, vocab]; one TokenLogprob per row for `chosen[row]` with `top_counts[row]`
    alternatives."""
    logprobs = logits.float().log_softmax(dim=-1)
    chosen_lp = logprobs.gather(1, torch.tensor(chosen, device=logits.device).unsqueeze(1)).squeeze(1).tolist()
    k = max(top_counts, default=0)
    top_values, top_ids = (logprobs.topk(k, dim=-1) if k else (logprobs[:, :0], logprobs[:, :0]))
    top_values, top_ids = top_values.tolist(), top_ids.tolist()
    return [
        TokenLogprob(
            token_id=token,
            logprob=lp,
            top=tuple(zip(top_ids[row][:count], top_values[row][:count])),
        )
        for row, (token, lp, count) in enumerate(zip(chosen, chosen_lp, top_counts))
    ]


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
