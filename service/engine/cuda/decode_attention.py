"""Decode attention over the paged KV cache's block tables, in place: one Triton program per
(sequence, kv head) reads the sequence's blocks one after another with an online softmax, for the
query heads of that kv head. No gather copy of the cache, and a row's result does not depend on
the other rows of the batch. Where Triton cannot run (no CUDA, no triton package), torch gathers
each row's blocks and attends with masked products: the same arithmetic, for tests on CPU."""
from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only torch comes without triton
    triton = None

# Triton runs its kernels on CPU with numpy instead (read once: triton reads it at import too).
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def triton_runs_on(device: torch.device) -> bool:
    """Whether the Triton kernel can run on `device` (a GPU, or any device under TRITON_INTERPRET=1)."""
    if triton is None:
        return False
    return device.type == "cuda" or _INTERPRETED


if triton is not None:

    @triton.jit
    def _paged_decode_kernel(
        q_ptr, k_ptr, v_ptr, tables_ptr, lengths_ptr, out_ptr,
        scale,
        q_row_stride, q_head_stride, out_row_stride, out_head_stride,
        cache_block_stride, cache_position_stride, cache_head_stride,
        table_row_stride,
        GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr,
        USE_DOT: tl.constexpr,
    ):
        row = tl.program_id(0)
        kv_head = tl.program_id(1)
        length = tl.load(lengths_ptr + row)
        group = tl.arange(0, GROUP_PAD)
        in_group = group < GROUP
        heads = kv_head * GROUP + group
        dims = tl.arange(0, HEAD_DIM)
        positions = tl.arange(0, BLOCK)
        q = tl.load(
            q_ptr + row * q_row_stride + heads[:, None] * q_head_stride + dims[None, :],
            mask=in_group[:, None], other=0.0,
        )
        if not USE_DOT:
            q = q.to(tl.float32)
        best = tl.full([GROUP_PAD], float("-inf"), tl.float32)
        total = tl.zeros([GROUP_PAD], tl.float32)
        acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
        for index in range(0, tl.cdiv(length, BLOCK)):
            block = tl.load(tables_ptr + row * table_row_stride + index).to(tl.int64)
            valid = index * BLOCK + positions < length
            offsets = (block * cache_block_stride + kv_head * cache_head_stride
                       + positions[:, None] * cache_position_stride + dims[None, :])
            k = tl.load(k_ptr + offsets, mask=valid[:, None], other=0.0)
            v = tl.load(v_ptr + offsets, mask=valid[:, None], other=0.0)
            if USE_DOT:  # 16-bit caches: tensor-core products accumulated in float32
                scores = tl.dot(q, tl.trans(k)) * scale
            else:
                scores = tl.sum(q[:, None, :] * k.to(tl.float32)[None, :, :], axis=2) * scale
            scores = tl.where(valid[None, :], scores, float("-inf"))
            new_best = tl.maximum(best, tl.max(scores, axis=1))
            weights = tl.exp(scores - new_best[:, None])
            rescale = tl.exp(best - new_best)
            total = total * rescale + tl.sum(weights, axis=1)
            if USE_DOT:
                acc = acc * rescale[:, None] + tl.dot(weights.to(v.dtype), v)
            else:
                acc = acc * rescale[:, None] + tl.sum(weights[:, :, None] * v.to(tl.float32)[None, :, :], axis=1)
            best = new_best
        out = acc / tl.where(total > 0, total, 1.0)[:, None]
        tl.store(
            out_ptr + row * out_row_stride + heads[:, None] * out_head_stride + dims[None, :],
            out.to(out_ptr.dtype.element_ty), mask=in_group[:, None],
        )


def paged_decode_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    tables: torch.Tensor,
    lengths: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """q [rows, heads, head_dim], one token per row; keys and values [blocks, block_size, kv_heads,
    head_dim]; tables [rows, width] block ids; lengths [rows] positions to attend (0: the row's
    output is zeros). Returns [rows, heads, head_dim]."""
    rows, heads, head_dim = q.shape
    kv_heads = keys.shape[2]
    if q.stride(2) != 1 or keys.stride(3) != 1:
        raise ValueError("q, keys and values need contiguous head dimensions")
    if triton_runs_on(q.device) and head_dim & (head_dim - 1) == 0:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        group = heads // kv_heads
        # 16-bit caches go through tensor cores, whose products need at least 16 rows (query heads).
        use_dot = q.dtype in (torch.bfloat16, torch.float16)
        _paged_decode_kernel[(rows, kv_heads)](
            q, keys, values, tables, lengths, out, scale,
            q.stride(0), q.stride(1), out.stride(0), out.stride(1), keys.stride(0), keys.stride(1), keys.stride(2),
            tables.stride(0),
            GROUP=group, GROUP_PAD=max(triton.next_power_of_2(group), 16 if use_dot else 2), BLOCK=keys.shape[1],
            HEAD_DIM=head_dim, USE_DOT=use_dot,
        )
        return out
    return _torch_decode_attention(q, keys, values, tables, lengths, scale)


def _torch_decode_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, tables: torch.Tensor, lengths: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    rows, heads, head_dim = q.shape
    kv_heads = keys.shape[2]
    # [rows, width * block_size, kv_heads, head_dim] -> [rows, kv_heads, positions, head_dim]
    row_keys = keys[tables].flatten(1, 2).transpose(1, 2)
    row_values = values[tables].flatten(1, 2).transpose(1, 2)
    visible = torch.arange(row_keys.shape[2], device=q.device).unsqueeze(0) < lengths.unsqueeze(1)
    # Never-written positions may hold NaN, and a masked weight of 0 times NaN is NaN.
    row_values = row_values.masked_fill(~visible.view(rows, 1, -1, 1), 0.0)
    queries = q.view(rows, kv_heads, heads // kv_heads, head_dim)
    scores = torch.matmul(queries.float(), row_keys.float().transpose(2, 3)) * scale
    scores = scores.masked_fill(~visible.view(rows, 1, 1, -1), float("-inf"))
    weights = scores.softmax(dim=-1).nan_to_num(0.0)
    return torch.matmul(weights, row_values.float()).view(rows, heads, head_dim).to(q.dtype)
