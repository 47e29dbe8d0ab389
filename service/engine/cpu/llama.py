"""The CPU backend's lean forward pass for the Llama family (llama_family.py says which configs).

transformers' generic forward spends most of a small model's decode step in Python and framework
overhead. This module keeps only the arithmetic: fused QKV and gate/up projections, a rotary
table computed once by the model's own rotary module (so llama3, linear and YaRN scaling come for
free), and attention over the engine's paged KV cache (cpu/kv_cache.PagedKVCache) for a whole step at
once: prompt chunks and decode tokens alike, each token to its own sequence's blocks.

Every token of a step goes through the same kernels whatever its kind and its neighbours: one
linear kernel per layer for all rows (quantized.py), and tokenwire's paged attention kernel
(paged_attention.cpp), which attends each token alone over its own positions. So a token's keys
and values depend only on the tokens before it, which is what lets the engine share cached blocks
between requests and recompute preempted sequences without changing any output.

Weights are taken from a loaded transformers model, so both run the same numbers.
"""
import os
from typing import Final, List, NamedTuple

import torch
import torch.nn.functional as F

from service.engine.cpu import native
from service.engine.cpu.kv_cache import PagedKVCache
from service.engine.cpu.quantized import Linear, Quantization
from service.engine.cpu.torchscript import script
from service.engine.kv_memory import BLOCK_SIZE, BlockRunner, blocks_for_budget, bytes_per_token
from service.engine.llama_family import fused_projection, rms_norm, rotary_table, rotate
from service.engine.types import StepEntry

# A step with more tokens than this is mostly prompt: compute-bound rather than memory-bound.
PROMPT_STEP_TOKENS = 64


class _Layer(torch.nn.Module):
    def __init__(self, layer: torch.nn.Module, quantization: Quantization, dtype: torch.dtype) -> None:
        super().__init__()
        attn, mlp = layer.self_attn, layer.mlp
        self.input_norm = layer.input_layernorm.weight.detach().to(dtype)
        self.qkv = _fused([attn.q_proj, attn.k_proj, attn.v_proj], quantization, dtype)
        self.out = Linear(attn.o_proj.weight, attn.o_proj.bias, quantization, dtype)
        self.post_norm = layer.post_attention_layernorm.weight.detach().to(dtype)
        self.gate_up = _fused([mlp.gate_proj, mlp.up_proj], quantization, dtype)
        self.down = Linear(mlp.down_proj.weight, mlp.down_proj.bias, quantization, dtype)


def _fused(linears: list[torch.nn.Linear], mode: Quantization, dtype: torch.dtype) -> Linear:
    """One Linear computing several projections of the same input (q, k, v or gate, up)."""
    return Linear(*fused_projection(linears), mode, dtype)


class _StepTokens(NamedTuple):
    """The tokens of a step, all entries' in a row, and where their keys and values go."""

    ids: List[int]
    positions: List[int]
    # Block tables, one row per entry, padded to one width (the widest entry's, which covers the
    # step's furthest position), and which row each token uses.
    tables: List[List[int]]
    row_tables: List[int]
    # Each entry's first token and token count (torch's attention path goes entry by entry).
    entry_starts: List[int]
    entry_sizes: List[int]
    selected: List[int]  # the tokens whose logits come back


class _Forward(torch.nn.Module):
    """The arithmetic of a step, compiled with TorchScript (see LlamaRunner)."""

    heads: Final[int]
    kv_heads: Final[int]
    head_dim: Final[int]
    block_size: Final[int]
    scale: Final[float]
    eps: Final[float]
    native_attention: Final[bool]  # attention through tokenwire's kernel (native.py)

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype, quantization: Quantization, max_length: int) -> None:
        super().__init__()
        config, inner = model.config, model.model
        first = inner.layers[0].self_attn
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = first.head_dim
        self.block_size = BLOCK_SIZE
        self.scale = first.scaling
        self.eps = config.rms_norm_eps
        self.embed = inner.embed_tokens.weight.detach().to(dtype)
        self.final_norm = inner.norm.weight.detach().to(dtype)
        # The output projection has no blocks of 32 in a GGUF (Q8_0 or Q6_K): int8 at most.
        head_mode = Quantization.NONE if quantization is Quantization.NONE else Quantization.INT8
        self.lm_head = Linear(model.lm_head.weight, None, head_mode, dtype)
        self.layers = torch.nn.ModuleList(_Layer(layer, quantization, dtype) for layer in inner.layers)
        self.native_attention = (
            self.embed.device.type == "cpu"
            and dtype in (torch.bfloat16, torch.float32)
            and self.head_dim in native.HEAD_DIMS
            and native.available()
        )
        self.cos, self.sin = rotary_table(model, max_length, dtype)

    def forward(self, tokens: _StepTokens, keys: List[torch.Tensor], values: List[torch.Tensor]) -> torch.Tensor:
        """Float logits of the selected tokens; writes every token's keys and values into its
        sequence's blocks of `keys` and `values` (one tensor per layer)."""
        device = self.embed.device
        positions = torch.tensor(tokens.positions, dtype=torch.long, device=device)
        tables = torch.tensor(tokens.tables, dtype=torch.long, device=device)
        row_tables = torch.tensor(tokens.row_tables, dtype=torch.long, device=device)
        cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)
        hidden = F.embedding(torch.tensor(tokens.ids, dtype=torch.long, device=device), self.embed)
        q_size = self.heads * self.head_dim
        index = 0
        for layer in self.layers:
            x = self._norm(hidden, layer.input_norm)
            qkv = layer.qkv(x).view(-1, self.heads + 2 * self.kv_heads, self.head_dim)
            qk = rotate(qkv[:, : self.heads + self.kv_heads], cos, sin)
            q, k, v = qk[:, : self.heads], qk[:, self.heads :], qkv[:, self.heads + self.kv_heads :]
            if self.native_attention:
                attended = torch.ops.tokenwire.paged_attention(
                    q, k, v, keys[index], values[index], tables, row_tables, positions, self.scale
                )
            else:
                attended = _torch_attention(
                    tokens, q, k, v, keys[index], values[index], tables, row_tables, positions, self.scale
                )
            hidden = hidden + layer.out(attended.reshape(-1, q_size))
            x = self._norm(hidden, layer.post_norm)
            gate, up = layer.gate_up(x).chunk(2, dim=-1)
            hidden = hidden + layer.down(F.silu(gate) * up)
            index += 1
        selected = hidden[torch.tensor(tokens.selected, dtype=torch.long, device=device)]
        return self.lm_head(self._norm(selected, self.final_norm)).float()

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, weight, self.eps)


def _torch_attention(
    tokens: _StepTokens,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    tables: torch.Tensor,
    row_tables: torch.Tensor,
    positions: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """paged_attention.cpp's arithmetic with torch's products, where that kernel does not run:
    writes every token's key and value into its block, then, entry by entry, gathers the entry's
    blocks and attends its tokens to them, masked to each token's own positions.

    A sequence's tokens never share a product with another sequence's, so its output does not
    depend on the batch. They do share one with the other tokens of their own entry, and the
    products round differently for different numbers of rows: here a token's keys and values may
    differ in the last bits between a prompt chunk and a decode step (tokenwire's kernel attends
    each token alone and has no such difference)."""
    block_size = keys.shape[3]
    row_blocks = tables[row_tables]
    block = row_blocks.gather(1, torch.div(positions, block_size, rounding_mode="floor").unsqueeze(1)).squeeze(1)
    offset = torch.remainder(positions, block_size)
    keys[block, :, :, offset] = k
    values[block, :, offset] = v
    kv_heads, head_dim = keys.shape[1], keys.shape[2]
    out = torch.empty_like(q)
    for entry in range(len(tokens.entry_starts)):
        first, size = tokens.entry_starts[entry], tokens.entry_sizes[entry]
        entry_positions = positions.narrow(0, first, size)
        end = tokens.positions[first + size - 1] + 1
        used = -(-end // block_size)
        blocks = tables[entry, :used]
        # [kv_heads, head_dim, used * block_size] and [kv_heads, used * block_size, head_dim]
        entry_keys = keys.index_select(0, blocks).permute(1, 2, 0, 3).reshape(kv_heads, head_dim, -1)
        entry_values = values.index_select(0, blocks).permute(1, 0, 2, 3).reshape(kv_heads, -1, head_dim)
        # Past each token's own position: masked scores, and zeroed values (never-written memory
        # could hold NaN, and 0 * NaN is NaN).
        masked = torch.arange(used * block_size, device=q.device).unsqueeze(0) > entry_positions.unsqueeze(1)
        entry_values = entry_values.masked_fill(masked.all(dim=0).view(1, -1, 1), 0.0)
        # [kv_heads, size * group, head_dim]: the entry's tokens and query heads of each kv head.
        queries = q.narrow(0, first, size).view(size, kv_heads, -1, head_dim).transpose(0, 1)
        group = queries.shape[2]
        scores = torch.matmul(queries.reshape(kv_heads, size * group, head_dim), entry_keys).mul_(scale)
        scores = scores.view(kv_heads, size, group, -1).masked_fill_(masked.view(1, size, 1, -1), float("-inf"))
        weights = scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype).view(kv_heads, size * group, -1)
        attended = torch.matmul(weights, entry_values).view(kv_heads, size, group, head_dim).transpose(0, 1)
        out.narrow(0, first, size).copy_(attended.reshape(size, -1, head_dim))
    return out


class LlamaRunner(BlockRunner):
    """Runs steps of prompt chunks and decode tokens against a PagedKVCache (see
    runner.ModelRunner for the interface).

    The forward pass runs as TorchScript (see torchscript.py): the whole step, index tensors
    included, in one call with the GIL released."""

    def __init__(self, model: torch.nn.Module, *, kv_cache_bytes: int, max_length: int,
                 dtype: torch.dtype | None = None, quantization: Quantization = Quantization.NONE) -> None:
        """Takes the weights of `model` (which may be float32 so that quantization starts from
        exact values) and computes in `dtype` (default: the model's). The KV cache gets as many
        blocks as `kv_cache_bytes` holds."""
        self.device = next(model.parameters()).device
        self.dtype = dtype or next(model.parameters()).dtype
        forward = _Forward(model, self.dtype, quantization, max_length)
        self.native_attention = forward.native_attention
        self.kernels = native.kernel_path()
        self._forward = script(forward)
        self.token_bytes = bytes_per_token(
            layers=len(forward.layers), kv_heads=forward.kv_heads, head_dim=forward.head_dim, dtype=self.dtype
        )
        self.cache = PagedKVCache(
            layers=len(forward.layers),
            blocks=blocks_for_budget(kv_cache_bytes, block_size=self.block_size, token_bytes=self.token_bytes),
            block_size=self.block_size,
            kv_heads=forward.kv_heads,
            head_dim=forward.head_dim,
            dtype=self.dtype,
            device=self.device,
        )
        self.blocks = self.cache.blocks
        self.keys, self.values = self.cache.keys, self.cache.values
        # On CPU, decode steps (memory-bound) run on the configured threads, and steps with
        # prompt chunks (compute-bound) on every core.
        self._cpu_threads = {False: torch.get_num_threads(), True: len(os.sched_getaffinity(0))}
        for start in range(2):  # see torchscript.py
            self.step([StepEntry(sequence=0, blocks=[0], token_ids=[0], start=start)])

    @torch.inference_mode()
    def step(self, entries: list[StepEntry]) -> torch.Tensor:
        """Runs all entries in one pass; returns the float logits of each entry's last
        `logits_for` positions, in entry order ([rows, vocab])."""
        ids: list[int] = []
        positions: list[int] = []
        row_tables: list[int] = []
        entry_starts: list[int] = []
        selected: list[int] = []
        width = 0
        for index, entry in enumerate(entries):
            size = len(entry.token_ids)
            entry_starts.append(len(ids))
            selected.extend(range(len(ids) + size - entry.logits_for, len(ids) + size))
            ids.extend(entry.token_ids)
            positions.extend(range(entry.start, entry.start + size))
            row_tables.extend([index] * size)
            width = max(width, -(-(entry.start + size) // self.block_size))
        tokens = _StepTokens(
            ids=ids,
            positions=positions,
            tables=[entry.blocks[:width] + [0] * (width - len(entry.blocks[:width])) for entry in entries],
            row_tables=row_tables,
            entry_starts=entry_starts,
            entry_sizes=[len(entry.token_ids) for entry in entries],
            selected=selected,
        )
        if self.device.type == "cpu":
            threads = self._cpu_threads[len(ids) > PROMPT_STEP_TOKENS]
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
        return self._forward(tokens, self.keys, self.values)
