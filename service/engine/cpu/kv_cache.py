"""The paged KV cache's tensors on CPU: one pool of fixed-size blocks per layer, shared by every sequence.

A sequence's keys and values live in the blocks of its block table (the engine's BlockPool hands
them out), so memory follows the tokens actually held, never the longest sequence, and full
blocks can be shared between sequences with the same prefix. The pool's size comes from a byte
budget (kv_memory.blocks_for_budget).

Layouts, per layer:
- keys [blocks, kv_heads, head_dim, block_size]: each dimension's keys of a block are a run of
  positions, so 32 positions' scores take one cache line per dimension in tokenwire's kernel
  (paged_attention.cpp);
- values [blocks, kv_heads, block_size, head_dim]: one position's values are a run.

The tensors are zeroed when the worker starts, so the whole budget is resident from then on: a
budget that does not fit fails at start, not hours later when the prefix cache has filled the
pool, and the worker's memory stays flat while it serves (a growing one is a leak, not the cache).
Positions past a sequence's length are never read by tokenwire's kernel; torch's path masks them.
"""
from __future__ import annotations

import torch


class PagedKVCache:
    def __init__(
        self,
        *,
        layers: int,
        blocks: int,
        block_size: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.blocks = blocks
        self.block_size = block_size
        self.keys = [
            torch.zeros(blocks, kv_heads, head_dim, block_size, dtype=dtype, device=device) for _ in range(layers)
        ]
        self.values = [
            torch.zeros(blocks, kv_heads, block_size, head_dim, dtype=dtype, device=device) for _ in range(layers)
        ]
