"""Forward passes of a causal language model, one sequence at a time, each with its own KV cache.

This runner drives any transformers causal LM through its generic forward. It is the seam the
continuous-batching engine replaces: the scheduler only needs `prefill`, `decode` and `fork`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class SequenceState:
    """A sequence's KV cache and how many positions it holds."""

    cache: Any
    length: int


class ModelRunner:
    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model = model
        self.device = device

    @torch.inference_mode()
    def prefill(self, prompt_ids: tuple[int, ...]) -> tuple[torch.Tensor, SequenceState]:
        """Runs the prompt; returns the next-token logits ([vocab]) and the sequence state."""
        ids = torch.tensor([prompt_ids], device=self.device)
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1], SequenceState(out.past_key_values, len(prompt_ids))

    @torch.inference_mode()
    def decode(self, token_id: int, state: SequenceState) -> torch.Tensor:
        """Feeds one token; returns the next-token logits ([vocab]) and advances the state."""
        ids = torch.tensor([[token_id]], device=self.device)
        position = torch.tensor([[state.length]], device=self.device)
        out = self.model(
            input_ids=ids,
            position_ids=position,
            past_key_values=state.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        state.cache = out.past_key_values
        state.length += 1
        return out.logits[0, -1]

    @staticmethod
    def fork(state: SequenceState) -> SequenceState:
        """A copy for another sequence sampled from the same prompt (n > 1 shares one prefill)."""
        return SequenceState(copy.deepcopy(state.cache), state.length)
