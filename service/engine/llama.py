"""A lean forward pass for the Llama family (Llama 2/3.x, SmolLM, Qwen2, Mistral, Yi).

transformers' generic forward spends most of a small model's decode step in Python and framework
overhead. This module keeps only the arithmetic: fused QKV and gate/up projections, a rotary
table computed once by the model's own rotary module (so llama3, linear and YaRN scaling come for
free), and attention over the engine's slot cache (`kv_cache.SlotCache`) for a whole step at once:
the decode rows of every running sequence in one batched SDPA call, each prompt chunk in its own.

Weights are taken from a loaded transformers model, so both run the same numbers.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from service.engine.kv_cache import SlotCache
from service.engine.quantized import Linear, Quantization
from service.engine.types import StepEntry

_SUPPORTED_TYPES = {"llama", "qwen2", "mistral"}
# A step with more rows than this is mostly prompt: compute-bound rather than memory-bound.
PROMPT_STEP_ROWS = 64
_STATIC_ROPE_TYPES = {"default", "linear", "llama3", "yarn"}


def lean_support_problem(config: object) -> str | None:
    """Why this config cannot run on the lean forward (None when it can)."""
    model_type = getattr(config, "model_type", None)
    if model_type not in _SUPPORTED_TYPES:
        return f"model type {model_type!r}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r}"  # type: ignore[attr-defined]
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "sliding-window attention"
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in _STATIC_ROPE_TYPES:
        return f"rope type {rope_type!r}"
    return None


@dataclass
class _Layer:
    input_norm: torch.Tensor
    qkv: Linear
    out: Linear
    post_norm: torch.Tensor
    gate_up: Linear
    down: Linear


def _fused(linears: list[torch.nn.Linear], mode: Quantization, dtype: torch.dtype) -> Linear:
    """One Linear computing several projections of the same input (q, k, v or gate, up)."""
    weight = torch.cat([linear.weight for linear in linears])
    bias = None
    if any(linear.bias is not None for linear in linears):
        bias = torch.cat([
            linear.bias if linear.bias is not None else linear.weight.new_zeros(linear.out_features)
            for linear in linears
        ])
    return Linear(weight, bias, mode, dtype)


class LlamaRunner:
    """Runs steps of mixed prompt chunks and decode tokens against a SlotCache (see
    runner.ModelRunner for the interface)."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        slots: int,
        max_length: int,
        dtype: torch.dtype | None = None,
        quantization: Quantization = Quantization.NONE,
    ) -> None:
        """Takes the weights of `model` (which may be float32 so that quantization starts from
        exact values) and computes in `dtype` (default: the model's)."""
        config = model.config
        inner = model.model
        self.device = next(model.parameters()).device
        self.dtype = dtype or next(model.parameters()).dtype
        first = inner.layers[0].self_attn
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = first.head_dim
        self.scale = first.scaling
        self.eps = config.rms_norm_eps
        self.embed = inner.embed_tokens.weight.to(self.dtype)
        self.final_norm = inner.norm.weight.to(self.dtype)
        # The output projection has no blocks of 32 in a GGUF (Q8_0 or Q6_K): int8 at most.
        head_mode = Quantization.NONE if quantization is Quantization.NONE else Quantization.INT8
        self.lm_head = Linear(model.lm_head.weight, None, head_mode, self.dtype)
        self.layers = []
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append(_Layer(
                input_norm=layer.input_layernorm.weight.to(self.dtype),
                qkv=_fused([attn.q_proj, attn.k_proj, attn.v_proj], quantization, self.dtype),
                out=Linear(attn.o_proj.weight, attn.o_proj.bias, quantization, self.dtype),
                post_norm=layer.post_attention_layernorm.weight.to(self.dtype),
                gate_up=_fused([mlp.gate_proj, mlp.up_proj], quantization, self.dtype),
                down=Linear(mlp.down_proj.weight, mlp.down_proj.bias, quantization, self.dtype),
            ))
        positions = torch.arange(max_length, device=self.device).unsqueeze(0)
        probe = torch.empty((), device=self.device, dtype=torch.float32)
        cos, sin = inner.rotary_emb(probe, positions)
        self.cos, self.sin = cos[0].to(self.dtype), sin[0].to(self.dtype)
        self.cache = SlotCache(
            layers=len(self.layers),
            slots=slots,
            kv_heads=self.kv_heads,
            head_dim=self.head_dim,
            max_length=max_length,
            dtype=self.dtype,
            device=self.device,
        )

        # On CPU, decode steps (memory-bound) run on the configured threads, and steps with a
        # prompt chunk (compute-bound) on every core.
        self._cpu_threads = {False: torch.get_num_threads(), True: len(os.sched_getaffinity(0))}

    @property
    def free_slots(self) -> int:
        return self.cache.free_slots

    def allocate(self) -> int:
        return self.cache.allocate()

    def release(self, slot: int) -> None:
        self.cache.release(slot)

    def copy_prefix(self, source: int, target: int, length: int) -> None:
        self.cache.copy_prefix(source, target, length)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """RMSNorm as transformers computes it: normalized in float32, scaled in the model dtype."""
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype) * weight

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    @torch.inference_mode()
    def step(self, entries: list[StepEntry]) -> torch.Tensor:
        """Runs all entries in one pass; returns the float logits of each entry's last
        `logits_for` positions, in entry order ([rows, vocab])."""
        sizes = [len(entry.token_ids) for entry in entries]
        self.cache.reserve(max(entry.start + size for entry, size in zip(entries, sizes)))
        flat_ids = [t for entry in entries for t in entry.token_ids]
        flat_positions = [entry.start + i for entry, size in zip(entries, sizes) for i in range(size)]
        if self.device.type == "cpu":
            threads = self._cpu_threads[len(flat_ids) > PROMPT_STEP_ROWS]
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
        ids = torch.tensor(flat_ids, device=self.device)
        positions = torch.tensor(flat_positions, device=self.device)
        cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)
        plan = _AttentionPlan(entries, sizes, self.cache.capacity, self.device)

        hidden = F.embedding(ids, self.embed)
        q_size = self.heads * self.head_dim
        for index, layer in enumerate(self.layers):
            x = self._norm(hidden, layer.input_norm)
            qkv = layer.qkv(x, plan.quantized_rows).view(-1, self.heads + 2 * self.kv_heads, self.head_dim)
            qk = self._rotate(qkv[:, : self.heads + self.kv_heads], cos, sin)
            q, k, v = qk[:, : self.heads], qk[:, self.heads :], qkv[:, self.heads + self.kv_heads :]
            attended = plan.attend(index, q, k, v, self.cache, self.scale)
            hidden = hidden + layer.out(attended.reshape(-1, q_size), plan.quantized_rows)
            x = self._norm(hidden, layer.post_norm)
            gate, up = layer.gate_up(x, plan.quantized_rows).chunk(2, dim=-1)
            hidden = hidden + layer.down(F.silu(gate) * up, plan.quantized_rows)

        rows: list[int] = []
        offset = 0
        for entry, size in zip(entries, sizes):
            rows.extend(range(offset + size - entry.logits_for, offset + size))
            offset += size
        selected = hidden[torch.tensor(rows, device=self.device, dtype=torch.long)]
        decode_rows = min(plan.quantized_rows, selected.shape[0])
        logits = self.lm_head(self._norm(selected, self.final_norm), decode_rows).float()
        return logits


@dataclass
class _DecodeRows:
    """The step's decode rows, attending in one batched product over the window of slots they
    span (read in place from the cache)."""

    rows: torch.Tensor | slice  # the rows in the step's tokens (a slice when packed)
    slots: torch.Tensor
    positions: torch.Tensor  # where each row's new key and value go
    first_slot: int
    span: int
    span_rows: torch.Tensor  # each row's index inside the window
    length: int  # the keys read per slot: the longest row's, rounded up
    masked: torch.Tensor  # [span, 1, 1, length]: True past each slot's length
    # The rows are consecutive and fill the window in slot order.
    packed: bool


class _AttentionPlan:
    """How one step's tokens attend: index tensors and masks built once, used by every layer.

    Each multi-token entry (a prompt chunk) attends alone, causally, to its slot's earlier
    positions and itself. The decode entries (one token each) attend together: every slot of
    their window reads the longest row's length of keys, masked to its own. A row's result still
    depends on its own length only, so the batch a sequence runs in does not change its tokens:
    the batched products compute each (slot, kv head) matrix alone, and masked keys add exact
    zeros as long as the length read is a multiple of DECODE_ALIGN (float32 kernels change their
    summation order for ragged lengths). The fused SDPA kernels would not do: their blocking
    depends on the key length."""

    DECODE_ALIGN = 32

    def __init__(self, entries: list[StepEntry], sizes: list[int], capacity: int, device: torch.device) -> None:
        self.chunks: list[tuple[int, int, int, int, torch.Tensor | None]] = []
        decode: list[tuple[int, int, int]] = []
        offset = 0
        for entry, size in zip(entries, sizes):
            if size == 1:
                decode.append((offset, entry.slot, entry.start + 1))
            else:
                end = entry.start + size
                mask = None
                if entry.start:  # causal, shifted by the positions already in the cache
                    query_pos = torch.arange(entry.start, end, device=device).unsqueeze(1)
                    mask = torch.arange(end, device=device).unsqueeze(0) <= query_pos
                self.chunks.append((offset, size, entry.slot, entry.start, mask))
            offset += size
        # Rows of decode tokens come first (the engine orders them so); with no prompt chunk in
        # the step, every row is one.
        leading = next((i for i, size in enumerate(sizes) if size != 1), len(sizes))
        self.quantized_rows = leading if self.chunks else sys.maxsize
        self.decode = self._decode_rows(decode, capacity, device) if decode else None

    @classmethod
    def _decode_rows(cls, members: list[tuple[int, int, int]], capacity: int, device: torch.device) -> _DecodeRows:
        rows, slots, ends = (list(column) for column in zip(*members))
        length = min(-(-max(ends) // cls.DECODE_ALIGN) * cls.DECODE_ALIGN, capacity)
        first = min(slots)
        span = max(slots) - first + 1
        span_rows = torch.tensor(slots, device=device) - first
        # Slots in the window without a decode row attend to position 0 only, so their
        # (discarded) rows stay finite.
        window_ends = torch.ones(span, dtype=torch.long, device=device)
        window_ends[span_rows] = torch.tensor(ends, device=device)
        masked = torch.arange(length, device=device).unsqueeze(0) >= window_ends.unsqueeze(1)
        packed = span == len(rows) and rows == list(range(rows[0], rows[0] + span)) and slots == list(
            range(first, first + span)
        )
        return _DecodeRows(
            rows=slice(rows[0], rows[0] + span) if packed else torch.tensor(rows, device=device),
            slots=torch.tensor(slots, device=device),
            positions=torch.tensor(ends, device=device) - 1,
            first_slot=first,
            span=span,
            span_rows=span_rows,
            length=length,
            masked=masked[:, None, None, :],
            packed=packed,
        )

    def attend(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: SlotCache, scale: float
    ) -> torch.Tensor:
        """q, k, v: [tokens, heads, head_dim] for the whole step; writes k, v into the cache and
        returns the attention output [tokens, heads, head_dim]."""
        keys, values = cache.keys[layer], cache.values[layer]  # see SlotCache for the layouts
        decode = self.decode
        if decode is not None:
            keys[decode.slots, :, :, decode.positions] = k[decode.rows]
            values[decode.slots, :, decode.positions] = v[decode.rows]
            kv_heads = keys.shape[1]
            # [span, kv_heads, heads per kv head, head_dim]: grouped-query attention as a batch
            # of small matrix products, one per slot and kv head (the fused SDPA kernels are
            # built for long queries and are slow for one query row).
            if decode.packed:  # the rows are the window's slots, in order: no scatter, no gather
                queries = q[decode.rows]
            else:
                queries = q.new_zeros(decode.span, q.shape[1], q.shape[2])
                queries[decode.span_rows] = q[decode.rows]
            queries = queries.view(decode.span, kv_heads, -1, q.shape[2])
            window = slice(decode.first_slot, decode.first_slot + decode.span)
            scores = torch.matmul(queries, keys[window, ..., : decode.length]).mul_(scale)
            scores = scores.masked_fill_(decode.masked, float("-inf"))
            weights = scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
            attended = torch.matmul(weights, values[window, :, : decode.length]).view(decode.span, *q.shape[1:])
            if decode.packed and not self.chunks:  # every row of the step, in order
                return attended
        out = torch.empty_like(q)
        if decode is not None:
            out[decode.rows] = attended if decode.packed else attended[decode.span_rows]
        for offset, size, slot, start, mask in self.chunks:
            end = start + size
            keys[slot, ..., start:end] = k[offset : offset + size].permute(1, 2, 0)
            values[slot, :, start:end] = v[offset : offset + size].transpose(0, 1)
            attended = F.scaled_dot_product_attention(
                q[offset : offset + size].transpose(0, 1).unsqueeze(0),
                keys[slot : slot + 1, ..., :end].transpose(2, 3).contiguous(),  # flash kernels want it so
                values[slot : slot + 1, :, :end],
                attn_mask=mask,
                is_causal=mask is None,
                scale=scale,
                enable_gqa=True,
            )
            out[offset : offset + size] = attended[0].transpose(0, 1)
        return out
