"""The baseline the shapes bench compares tokenwire with: transformers' own `generate` on the same
random weights (service/models/dummy.py draws them from the same config and seed), one static batch
of prompts at a time, greedy, every sequence running to max_new_tokens.

`transformers serve --continuous-batching` would be the closer peer, but it loads its weights from
a directory: an 8B-shaped model would first be written out (16 GB) and read back, in a device budget
of minutes. `generate` runs on the weights in memory. Its time to first token is the whole batch's
(the prefill of every prompt), taken from a streamer, which `generate` feeds each step's tokens.
"""
from __future__ import annotations

import pathlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers.generation.streamers import BaseStreamer

from service.models.dummy import random_model


@dataclass(frozen=True)
class BaselineRun:
    """One `generate` call on a batch of `batch` prompts."""

    batch: int
    output_tokens: int
    wall_s: float
    # From the call to the first step's tokens on the host (the batch's prefill and first token).
    ttft_s: float
    # (end − first token) / (tokens per sequence − 1).
    tpot_s: float

    @property
    def tok_per_s(self) -> float:
        return self.output_tokens / self.wall_s


class _StepClock(BaseStreamer):
    """Records when `generate` hands over the prompt (first call) and each step's tokens."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        self.stamps.append(time.perf_counter())

    def end(self) -> None:
        pass


def load(config_dir: pathlib.Path, device: str, dtype: str) -> torch.nn.Module:
    """The transformers model tokenwire's `--load-format dummy` serves, with the same weights."""
    return random_model(config_dir, getattr(torch, dtype), torch.device(device))


@torch.inference_mode()
def generate(model: torch.nn.Module, prompts: Sequence[list[int]], max_tokens: int) -> BaselineRun:
    """One static batch of equally long `prompts`, greedy, `max_tokens` new tokens each."""
    device = next(model.parameters()).device
    input_ids = torch.tensor(list(prompts), dtype=torch.long, device=device)
    clock = _StepClock()
    start = time.perf_counter()
    output = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_tokens,
        # EOS is suppressed until max_tokens (as ignore_eos does on tokenwire's side).
        min_new_tokens=max_tokens,
        do_sample=False,
        pad_token_id=0,
        streamer=clock,
    )
    end = time.perf_counter()
    generated = output.shape[1] - input_ids.shape[1]
    if generated != max_tokens or len(clock.stamps) != max_tokens + 1:
        raise RuntimeError(f"generate made {generated} tokens in {len(clock.stamps) - 1} steps, not {max_tokens}")
    first = clock.stamps[1]
    return BaselineRun(
        batch=len(prompts),
        output_tokens=generated * len(prompts),
        wall_s=end - start,
        ttft_s=first - start,
        tpot_s=(clock.stamps[-1] - first) / max(1, max_tokens - 1),
    )
