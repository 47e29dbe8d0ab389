"""Forward passes for the engine: the lean Llama-family runner of the model's device (cpu/ or
cuda/, neither of which imports the other), or transformers' forward for every other
architecture. Both run a step of StepEntry at once over a KV cache of blocks."""
from __future__ import annotations

import logging
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from service.engine.cpu.llama import LlamaRunner
from service.engine.cpu.quantized import Quantization
from service.engine.cuda.runner import CudaRunner
from service.engine.kv_memory import BLOCK_SIZE, blocks_for_budget, bytes_per_token
from service.engine.llama_family import lean_support_problem
from service.engine.types import StepEntry

log = logging.getLogger(__name__)


class ModelRunner(Protocol):
    """What the scheduler needs from a model: a KV cache of `blocks` blocks of `block_size`
    positions, and a forward step.

    `shares_blocks`: whether keys and values live in the blocks, so that sequences can share
    blocks (prefix caching). A runner that keeps its caches its own way (TransformersRunner) uses
    the blocks as a measure of memory only."""

    blocks: int
    block_size: int
    shares_blocks: bool
    # One token's keys and values, in bytes.
    token_bytes: int
    # Whose kernels compute: "tokenwire" (the CPU backend's), "triton" (the CUDA backend's decode
    # attention) or "torch". Shown on the model card; it decides the keys and values' last bits.
    kernels: str

    def step(self, entries: list[StepEntry]) -> torch.Tensor:
        """Runs the entries; returns float logits, each entry's last `logits_for` positions in
        entry order ([rows, vocab]), valid until the next step (a runner may reuse the memory)."""

    def release(self, sequence: int) -> None:
        """Forgets whatever the runner keeps for a sequence that stopped running."""

    def copy_block(self, source: int, target: int) -> None:
        """Copies a block's keys and values (runners that share blocks only)."""


class TransformersRunner:
    """transformers' generic forward, each sequence with its own cache: any causal LM
    transformers can load runs on it.

    The decode rows of a step run as one batch: their caches are left-padded to the longest,
    stacked, run with a padding mask, and each row's grown cache is cut back out. Prompt chunks
    run one by one. Slower than the lean runner (the caches are copied every step), and a row's
    logits can differ in the last bits with the batch around it. Models whose caches are not
    plain full-attention layers (sliding windows, state-space layers) run every row alone."""

    shares_blocks = False
    block_size = BLOCK_SIZE
    kernels = "torch"

    def __init__(self, model: torch.nn.Module, *, kv_cache_bytes: int) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        config = model.config
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        self.token_bytes = bytes_per_token(
            layers=config.num_hidden_layers, kv_heads=kv_heads, head_dim=head_dim, dtype=model.dtype
        )
        self.blocks = blocks_for_budget(kv_cache_bytes, block_size=self.block_size, token_bytes=self.token_bytes)
        self._caches: dict[int, Any] = {}

    def release(self, sequence: int) -> None:
        self._caches.pop(sequence, None)

    def copy_block(self, source: int, target: int) -> None:
        raise NotImplementedError("TransformersRunner keeps its caches per sequence, not in shared blocks")

    @torch.inference_mode()
    def step(self, entries: list[StepEntry]) -> torch.Tensor:
        decode = [entry for entry in entries if len(entry.token_ids) == 1 and entry.start and entry.logits_for == 1]
        batched = len(decode) > 1 and all(_stackable(self._caches[entry.sequence]) for entry in decode)
        decode_logits = dict(zip((entry.sequence for entry in decode), self._decode(decode))) if batched else {}
        rows = []
        for entry in entries:
            logits = decode_logits[entry.sequence] if entry.sequence in decode_logits else self._alone(entry)
            if logits is not None:
                rows.append(logits)
        if not rows:
            return torch.empty(0, device=self.device)
        return torch.cat(rows)

    def _alone(self, entry: StepEntry) -> torch.Tensor | None:
        size = len(entry.token_ids)
        out = self.model(
            input_ids=torch.tensor([entry.token_ids], device=self.device),
            position_ids=torch.arange(entry.start, entry.start + size, device=self.device).unsqueeze(0),
            past_key_values=self._caches.get(entry.sequence) if entry.start else None,
            use_cache=True,
            logits_to_keep=max(entry.logits_for, 1),
        )
        self._caches[entry.sequence] = out.past_key_values
        return out.logits[0, -entry.logits_for :].float() if entry.logits_for else None

    def _decode(self, entries: list[StepEntry]) -> list[torch.Tensor]:
        """One forward for the one-token entries; returns each entry's logits [1, vocab]."""
        caches = [self._caches[entry.sequence] for entry in entries]
        lengths = [cache.get_seq_length() for cache in caches]
        longest = max(lengths)
        padded = []
        for layer in range(len(caches[0].layers)):
            keys, values = (
                torch.cat([
                    F.pad(getattr(cache.layers[layer], name), (0, 0, longest - length, 0))
                    for cache, length in zip(caches, lengths)
                ])
                for name in ("keys", "values")
            )
            padded.append((keys, values))
        mask = torch.zeros(len(entries), longest + 1, dtype=torch.long, device=self.device)
        for row, length in enumerate(lengths):
            mask[row, longest - length :] = 1
        out = self.model(
            input_ids=torch.tensor([entry.token_ids for entry in entries], device=self.device),
            position_ids=torch.tensor([[entry.start] for entry in entries], device=self.device),
            attention_mask=mask,
            past_key_values=DynamicCache(padded),
            use_cache=True,
            logits_to_keep=1,
        )
        grown = out.past_key_values
        for row, (entry, length) in enumerate(zip(entries, lengths)):
            start = longest - length
            self._caches[entry.sequence] = DynamicCache([
                (layer.keys[row : row + 1, :, start:].clone(), layer.values[row : row + 1, :, start:].clone())
                for layer in grown.layers
            ])
        return [out.logits[row, -1:].float() for row in range(len(entries))]


def _stackable(cache: Any) -> bool:
    """Whether `cache` is a DynamicCache of full-attention layers only (see TransformersRunner)."""
    return isinstance(cache, DynamicCache) and all(
        type(layer) is DynamicLayer and layer.keys is not None for layer in cache.layers
    )


def create_runner(
    model: torch.nn.Module,
    *,
    kv_cache_bytes: int,
    max_length: int,
    dtype: torch.dtype | None = None,
    quantization: Quantization = Quantization.NONE,
    max_batch: int = 64,
) -> ModelRunner:
    """The lean runner of the model's device where the architecture allows it (the CPU backend,
    with `quantization`, or the CUDA backend, whose decode steps of up to `max_batch` rows replay
    CUDA graphs), else transformers' forward (which ignores `quantization`). Computes in `dtype`,
    by default the model's; the KV cache gets `kv_cache_bytes`."""
    problem = lean_support_problem(model.config)
    if problem is None:
        if next(model.parameters()).device.type == "cuda":
            if quantization is not Quantization.NONE:
                raise ValueError("quantized weights run on CPU only")
            return CudaRunner(model, kv_cache_bytes=kv_cache_bytes, max_length=max_length, dtype=dtype,
                              max_batch=max_batch)
        return LlamaRunner(
            model, kv_cache_bytes=kv_cache_bytes, max_length=max_length, dtype=dtype, quantization=quantization
        )
    log.info("%s runs on transformers' forward, unquantized (%s is not supported by the lean runner)",
             type(model).__name__, problem)
    return TransformersRunner(model.to(dtype) if dtype else model, kv_cache_bytes=kv_cache_bytes)
