"""Forward passes for the engine: the lean Llama-family runner, or transformers' forward for
every other architecture. Both hand out KV-cache slots and run a step of StepEntry at once."""
from __future__ import annotations

import copy
import logging
from typing import Any, Protocol

import torch

from service.engine.llama import LlamaRunner, lean_support_problem
from service.engine.quantized import Quantization
from service.engine.types import StepEntry

log = logging.getLogger(__name__)


class ModelRunner(Protocol):
    """What the scheduler needs from a model: cache slots and a forward step."""

    @property
    def free_slots(self) -> int: ...

    def allocate(self) -> int: ...

    def release(self, slot: int) -> None: ...

    def copy_prefix(self, source: int, target: int, length: int) -> None:
        """Gives slot `target` the first `length` cached positions of slot `source`."""

    def step(self, entries: list[StepEntry]) -> torch.Tensor:
        """Runs the entries; returns float logits, each entry's last `logits_for` positions in
        entry order ([rows, vocab])."""


class TransformersRunner:
    """transformers' generic forward, one sequence at a time, each slot with its own cache.

    Slower than the lean runner (one forward call per sequence per step), but it runs any
    causal LM transformers can load."""

    def __init__(self, model: torch.nn.Module, *, slots: int) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self._free = list(range(slots))
        self._caches: dict[int, Any] = {}

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        self._free.sort()
        return self._free.pop(0)

    def release(self, slot: int) -> None:
        self._caches.pop(slot, None)
        self._free.append(slot)

    def copy_prefix(self, source: int, target: int, length: int) -> None:
        cache = copy.deepcopy(self._caches[source])
        cache.crop(length)
        self._caches[target] = cache

    @torch.inference_mode()
    def step(self, entries: list[StepEntry]) -> torch.Tensor:
        rows = []
        for entry in entries:
            size = len(entry.token_ids)
            out = self.model(
                input_ids=torch.tensor([entry.token_ids], device=self.device),
                position_ids=torch.arange(entry.start, entry.start + size, device=self.device).unsqueeze(0),
                past_key_values=self._caches.get(entry.slot) if entry.start else None,
                use_cache=True,
                logits_to_keep=max(entry.logits_for, 1),
            )
            self._caches[entry.slot] = out.past_key_values
            if entry.logits_for:
                rows.append(out.logits[0, -entry.logits_for :].float())
        if not rows:
            return torch.empty(0, device=self.device)
        return torch.cat(rows)


def create_runner(
    model: torch.nn.Module,
    *,
    slots: int,
    max_length: int,
    dtype: torch.dtype | None = None,
    quantization: Quantization = Quantization.NONE,
) -> ModelRunner:
    """The lean runner where the architecture allows it, else transformers' forward (which
    ignores `quantization`). Computes in `dtype`, by default the model's."""
    problem = lean_support_problem(model.config)
    if problem is None:
        return LlamaRunner(model, slots=slots, max_length=max_length, dtype=dtype, quantization=quantization)
    log.info("%s runs on transformers' forward, unquantized (%s is not supported by the lean runner)",
             type(model).__name__, problem)
    return TransformersRunner(model.to(dtype) if dtype else model, slots=slots)
