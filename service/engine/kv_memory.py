"""The paged KV cache's arithmetic, common to every backend: block size, bytes per token, and how
many blocks a memory budget holds. Each backend lays its blocks' tensors out its own way."""
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
