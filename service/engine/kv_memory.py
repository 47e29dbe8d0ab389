"""The paged KV cache's arithmetic, common to every backend: block size, bytes per token, how many
blocks a memory budget holds, and what the runners that keep keys and values in the engine's
blocks share. Each backend lays its blocks' tensors out its own way."""
from __future__ import annotations

import torch

# Positions per KV-cache block. It divides the engine's prompt chunk, so that chunk boundaries
# fall at fixed positions, and it is the tile of scores of the CPU attention kernel.
BLOCK_SIZE = 32


def bytes_per_token(*, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """One token's keys and values over all layers."""
    return 2 * layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def blocks_for_budget(budget_bytes: int, *, block_size: int, token_bytes: int) -> int:
    """How many blocks `budget_bytes` holds; ValueError when not one."""
    blocks = budget_bytes // (block_size * token_bytes)
    if blocks < 1:
        raise ValueError(
            f"a KV-cache budget of {budget_bytes} bytes holds no block of this model "
            f"({block_size * token_bytes} bytes for {block_size} tokens)"
        )
    return blocks


class BlockRunner:
    """The part of a runner whose keys and values live in the engine's blocks: `keys` and
    `values` hold a tensor per layer, indexed by block first."""

    shares_blocks = True
    block_size = BLOCK_SIZE
    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    def release(self, sequence: int) -> None:
        """Nothing to do: a sequence's state is its blocks, which the engine holds."""

    @torch.inference_mode()
    def copy_block(self, source: int, target: int) -> None:
        for keys, values in zip(self.keys, self.values):
            keys[target] = keys[source]
            values[target] = values[source]
