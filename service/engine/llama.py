"""A lean forward pass for the Llama family (Llama 2/3.x, SmolLM, Qwen2, Mistral, Yi).

transformers' generic forward spends most of a small model's decode step in Python and framework
overhead. This module keeps only the arithmetic: fused QKV and gate/up projections, a rotary
table computed once by the model's own rotary module (so llama3, linear and YaRN scaling come for
free), and attention over the engine's slot cache (`kv_cache.SlotCache`) for a whole step at once:
the decode rows of every running sequence in one call (tokenwire's decode_attention kernel on
CPU, see native.py; elsewhere one batch of small matrix products), each prompt chunk in its own
SDPA call.

Weights are taken from a loaded transformers model, so both run the same numbers.
"""
import os
import sys
from typing import Final, List, NamedTuple, Optional

import torch
import torch.nn.functional as F

from service.engine import native
from service.engine.kv_cache import SlotCache
from service.engine.quantized import Linear, Quantization
from service.engine.torchscript import script
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
    weight = torch.cat([linear.weight for linear in linears])
    bias = None
    if any(linear.bias is not None for linear in linears):
        bias = torch.cat([
            linear.bias if linear.bias is not None else linear.weight.new_zeros(linear.out_features)
            for linear in linears
        ])
    return Linear(weight, bias, mode, dtype)


class _Forward(torch.nn.Module):
    """The arithmetic of a step, compiled with TorchScript (see LlamaRunner)."""

    heads: Final[int]
    kv_heads: Final[int]
    head_dim: Final[int]
    scale: Final[float]
    eps: Final[float]
    native_attention: Final[bool]  # decode attention through tokenwire's kernel (native.py)

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype, quantization: Quantization, max_length: int) -> None:
        super().__init__()
        config, inner = model.config, model.model
        first = inner.layers[0].self_attn
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = first.head_dim
        self.scale = first.scaling
        self.eps = config.rms_norm_eps
        self.embed = inner.embed_tokens.weight.detach().to(dtype)
        self.final_norm = inner.norm.weight.detach().to(dtype)
        # The output projection has no blocks of 32 in a GGUF (Q8_0 or Q6_K): int8 at most.
        head_mode = Quantization.NONE if quantization is Quantization.NONE else Quantization.INT8
        self.lm_head = Linear(model.lm_head.weight, None, head_mode, dtype)
        self.layers = torch.nn.ModuleList(_Layer(layer, quantization, dtype) for layer in inner.layers)
        device = self.embed.device
        self.native_attention = (
            device.type == "cpu"
            and dtype in (torch.bfloat16, torch.float32)
            and self.head_dim in native.DECODE_HEAD_DIMS
            and native.available()
        )
        positions = torch.arange(max_length, device=device).unsqueeze(0)
        probe = torch.empty((), device=device, dtype=torch.float32)
        with torch.no_grad():
            cos, sin = inner.rotary_emb(probe, positions)
        self.cos, self.sin = cos[0].to(dtype), sin[0].to(dtype)

    def forward(
        self, tokens: "_StepTokens", plan: "_AttentionPlan", keys: List[torch.Tensor], values: List[torch.Tensor]
    ) -> torch.Tensor:
        """Float logits of the selected rows of the step's tokens; writes the tokens' keys and
        values into `keys` and `values` (one tensor per layer)."""
        device = self.embed.device
        positions = torch.tensor(tokens.positions, dtype=torch.long, device=device)
        cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)
        attention = _attention_tensors(plan, device, self.native_attention)
        hidden = F.embedding(torch.tensor(tokens.ids, dtype=torch.long, device=device), self.embed)
        quantized_rows = plan.quantized_rows
        q_size = self.heads * self.head_dim
        index = 0
        for layer in self.layers:
            x = self._norm(hidden, layer.input_norm)
            qkv = layer.qkv(x, quantized_rows).view(-1, self.heads + 2 * self.kv_heads, self.head_dim)
            qk = _rotate(qkv[:, : self.heads + self.kv_heads], cos, sin)
            q, k, v = qk[:, : self.heads], qk[:, self.heads :], qkv[:, self.heads + self.kv_heads :]
            attended = _attend(
                plan, attention, q, k, v, keys[index], values[index], self.scale, self.native_attention
            )
            hidden = hidden + layer.out(attended.reshape(-1, q_size), quantized_rows)
            x = self._norm(hidden, layer.post_norm)
            gate, up = layer.gate_up(x, quantized_rows).chunk(2, dim=-1)
            hidden = hidden + layer.down(F.silu(gate) * up, quantized_rows)
            index += 1
        selected = hidden[torch.tensor(tokens.selected, dtype=torch.long, device=device)]
        decode_rows = min(quantized_rows, selected.shape[0])
        return self.lm_head(self._norm(selected, self.final_norm), decode_rows).float()

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """RMSNorm as transformers computes it: normalized in float32, scaled in the model dtype."""
        return torch.rms_norm(x.float(), [x.shape[-1]], None, self.eps).to(x.dtype) * weight


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class LlamaRunner:
    """Runs steps of mixed prompt chunks and decode tokens against a SlotCache (see
    runner.ModelRunner for the interface).

    The forward pass runs as TorchScript (see torchscript.py): the whole step, index tensors
    included, in one call with the GIL released. Measured with the engine in process and 1 ms
    of Python per token on its consumer's event loop: a one-row decode step's forward took
    12.5-13.8 ms op by op and 10.3-10.9 ms compiled (1 thread)."""

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
        self.device = next(model.parameters()).device
        self.dtype = dtype or next(model.parameters()).dtype
        forward = _Forward(model, self.dtype, quantization, max_length)
        self._forward = script(forward)
        self.cache = SlotCache(
            layers=len(forward.layers),
            slots=slots,
            kv_heads=forward.kv_heads,
            head_dim=forward.head_dim,
            max_length=max_length,
            dtype=self.dtype,
            device=self.device,
        )

        # On CPU, decode steps (memory-bound) run on the configured threads, and steps with a
        # prompt chunk (compute-bound) on every core.
        self._cpu_threads = {False: torch.get_num_threads(), True: len(os.sched_getaffinity(0))}
        slot = self.allocate()
        for start in range(2):  # see torchscript.py
            self.step([StepEntry(slot=slot, token_ids=[0], start=start)])
        self.release(slot)

    @property
    def free_slots(self) -> int:
        return self.cache.free_slots

    def allocate(self) -> int:
        return self.cache.allocate()

    def release(self, slot: int) -> None:
        self.cache.release(slot)

    def copy_prefix(self, source: int, target: int, length: int) -> None:
        self.cache.copy_prefix(source, target, length)

    @torch.inference_mode()
    def step(self, entries: list[StepEntry]) -> torch.Tensor:
        """Runs all entries in one pass; returns the float logits of each entry's last
        `logits_for` positions, in entry order ([rows, vocab])."""
        sizes = [len(entry.token_ids) for entry in entries]
        self.cache.reserve(max(entry.start + size for entry, size in zip(entries, sizes)))
        selected: list[int] = []
        offset = 0
        for entry, size in zip(entries, sizes):
            selected.extend(range(offset + size - entry.logits_for, offset + size))
            offset += size
        tokens = _StepTokens(
            ids=[t for entry in entries for t in entry.token_ids],
            positions=[entry.start + i for entry, size in zip(entries, sizes) for i in range(size)],
            selected=selected,
        )
        if self.device.type == "cpu":
            threads = self._cpu_threads[len(tokens.ids) > PROMPT_STEP_ROWS]
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
        plan = _plan(entries, sizes, self.cache.capacity)
        return self._forward(tokens, plan, self.cache.keys, self.cache.values)


class _StepTokens(NamedTuple):
    """The tokens of a step, all entries' in a row."""

    ids: List[int]
    positions: List[int]
    selected: List[int]  # the rows whose logits come back


class _DecodeRows(NamedTuple):
    """The step's decode rows, attending in one batched product over the window of slots they
    span (read in place from the cache)."""

    rows: List[int]  # the rows in the step's tokens
    slots: List[int]
    ends: List[int]  # each row's length, its new token included
    first_slot: int
    span: int
    length: int  # the keys read per slot: the longest row's, rounded up
    # The rows are consecutive and fill the window in slot order.
    packed: bool


class _Chunk(NamedTuple):
    """A prompt chunk: `size` rows from `offset` on, entering `slot` at position `start`."""

    offset: int
    size: int
    slot: int
    start: int


class _AttentionPlan(NamedTuple):
    """How one step's tokens attend.

    Each multi-token entry (a prompt chunk) attends alone, causally, to its slot's earlier
    positions and itself. The decode entries (one token each) attend together. tokenwire's
    kernel reads each row's own positions in its slot. Without it, every slot of their window
    reads the longest row's length of keys, masked to its own; a row's result still
    depends on its own length only, so the batch a sequence runs in does not change its tokens:
    the batched products compute each (slot, kv head) matrix alone, and masked keys add exact
    zeros as long as the length read is a multiple of DECODE_ALIGN (float32 kernels change their
    summation order for ragged lengths). The fused SDPA kernels would not do: their blocking
    depends on the key length.

    Plain numbers, built in Python; the tensors every layer uses are made once per step inside
    the compiled forward (`_attention_tensors`), with the GIL released."""

    decode: Optional[_DecodeRows]
    chunks: List[_Chunk]
    # Rows of decode tokens come first (the engine orders them so); with no prompt chunk in the
    # step, every row is one.
    quantized_rows: int


DECODE_ALIGN = 32


def _plan(entries: list[StepEntry], sizes: list[int], capacity: int) -> _AttentionPlan:
    chunks: list[_Chunk] = []
    rows, slots, ends = [], [], []
    offset = 0
    for entry, size in zip(entries, sizes):
        if size == 1:
            rows.append(offset)
            slots.append(entry.slot)
            ends.append(entry.start + 1)
        else:
            chunks.append(_Chunk(offset, size, entry.slot, entry.start))
        offset += size
    decode = None
    if rows:
        first, span = min(slots), max(slots) - min(slots) + 1
        decode = _DecodeRows(
            rows=rows,
            slots=slots,
            ends=ends,
            first_slot=first,
            span=span,
            length=min(-(-max(ends) // DECODE_ALIGN) * DECODE_ALIGN, capacity),
            packed=span == len(rows)
            and rows == list(range(rows[0], rows[0] + span))
            and slots == list(range(first, first + span)),
        )
    leading = next((i for i, size in enumerate(sizes) if size != 1), len(sizes))
    return _AttentionPlan(decode=decode, chunks=chunks, quantized_rows=leading if chunks else sys.maxsize)


class _AttentionTensors(NamedTuple):
    """The index tensors and masks of an _AttentionPlan."""

    rows: torch.Tensor  # _DecodeRows.rows (empty when packed: the rows are then a slice)
    slots: torch.Tensor
    positions: torch.Tensor  # where each decode row's new key and value go
    # torch's decode path only (empty when tokenwire's kernel attends):
    span_rows: torch.Tensor  # each decode row's index inside the window
    masked: torch.Tensor  # [span, 1, 1, length]: True past each slot's length
    chunk_masks: List[Optional[torch.Tensor]]  # None: plainly causal (the chunk starts its sequence)


def _attention_tensors(plan: _AttentionPlan, device: torch.device, native_decode: bool) -> _AttentionTensors:
    """`native_decode`: tokenwire's kernel attends (see _attend), which needs no window tensors."""
    chunk_masks: List[Optional[torch.Tensor]] = []
    for chunk in plan.chunks:
        mask: Optional[torch.Tensor] = None
        if chunk.start > 0:  # causal, shifted by the positions already in the cache
            end = chunk.start + chunk.size
            query_positions = torch.arange(chunk.start, end, device=device).unsqueeze(1)
            mask = torch.arange(end, device=device).unsqueeze(0) <= query_positions
        chunk_masks.append(mask)
    decode = plan.decode
    empty = torch.empty(0, dtype=torch.long, device=device)
    if decode is None:
        return _AttentionTensors(empty, empty, empty, empty, empty, chunk_masks)
    slots = torch.tensor(decode.slots, dtype=torch.long, device=device)
    ends = torch.tensor(decode.ends, dtype=torch.long, device=device)
    rows = empty if decode.packed else torch.tensor(decode.rows, dtype=torch.long, device=device)
    if native_decode:
        return _AttentionTensors(rows, slots, ends - 1, empty, empty, chunk_masks)
    span_rows = slots - decode.first_slot
    # Slots in the window without a decode row attend to position 0 only, so their
    # (discarded) rows stay finite.
    window_ends = torch.ones(decode.span, dtype=torch.long, device=device)
    window_ends[span_rows] = ends
    masked = torch.arange(decode.length, device=device).unsqueeze(0) >= window_ends.unsqueeze(1)
    return _AttentionTensors(
        rows=rows,
        slots=slots,
        positions=ends - 1,
        span_rows=span_rows,
        masked=masked[:, None, None, :],
        chunk_masks=chunk_masks,
    )


def _attend(
    plan: _AttentionPlan,
    tensors: _AttentionTensors,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    scale: float,
    native_decode: bool,
) -> torch.Tensor:
    """q, k, v: [tokens, heads, head_dim] for the whole step; writes k, v into one layer's
    cache (see SlotCache for the layouts) and returns the attention output [tokens, heads,
    head_dim]. `native_decode`: decode rows through tokenwire's kernel (see native.py), else
    through torch's batched products over the window of slots."""
    decode = plan.decode
    attended = q  # assigned below whenever it is read
    if decode is not None:
        if decode.packed:  # the rows are the window's slots, in order: no scatter, no gather
            queries = q.narrow(0, decode.rows[0], decode.span)
            new_keys = k.narrow(0, decode.rows[0], decode.span)
            new_values = v.narrow(0, decode.rows[0], decode.span)
        else:
            queries, new_keys, new_values = q[tensors.rows], k[tensors.rows], v[tensors.rows]
        if native_decode:  # one row per decode row
            attended = torch.ops.tokenwire.decode_attention(
                queries, new_keys, new_values, keys, values, tensors.slots, tensors.positions, scale
            )
        else:  # one row per slot of the window
            attended = _attend_window(decode, tensors, queries, new_keys, new_values, keys, values, scale)
        if decode.packed and len(plan.chunks) == 0:  # every row of the step, in order
            return attended
    out = torch.empty_like(q)
    if decode is not None:
        if decode.packed:
            out.narrow(0, decode.rows[0], decode.span).copy_(attended)
        elif native_decode:
            out[tensors.rows] = attended
        else:
            out[tensors.rows] = attended[tensors.span_rows]
    for chunk, mask in zip(plan.chunks, tensors.chunk_masks):
        end = chunk.start + chunk.size
        keys[chunk.slot, :, :, chunk.start : end] = k.narrow(0, chunk.offset, chunk.size).permute(1, 2, 0)
        values[chunk.slot, :, chunk.start : end] = v.narrow(0, chunk.offset, chunk.size).transpose(0, 1)
        attended = F.scaled_dot_product_attention(
            q.narrow(0, chunk.offset, chunk.size).transpose(0, 1).unsqueeze(0),
            keys[chunk.slot : chunk.slot + 1, :, :, :end].transpose(2, 3).contiguous(),  # flash kernels want it so
            values[chunk.slot : chunk.slot + 1, :, :end],
            attn_mask=mask,
            is_causal=mask is None,
            scale=scale,
            enable_gqa=True,
        )
        out.narrow(0, chunk.offset, chunk.size).copy_(attended[0].transpose(0, 1))
    return out


def _attend_window(
    decode: _DecodeRows,
    tensors: _AttentionTensors,
    queries: torch.Tensor,
    new_keys: torch.Tensor,
    new_values: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Decode attention with torch's batched products: writes the rows' keys and values into
    the cache, then attends for every slot of the window [first_slot, first_slot + span) (a slot
    without a decode row gets a discarded row)."""
    keys[tensors.slots, :, :, tensors.positions] = new_keys
    values[tensors.slots, :, tensors.positions] = new_values
    if not decode.packed:
        spread = queries.new_zeros(decode.span, queries.shape[1], queries.shape[2])
        spread[tensors.span_rows] = queries
        queries = spread
    # [span, kv_heads, heads per kv head, head_dim]: grouped-query attention as a batch of
    # small matrix products, one per slot and kv head (the fused SDPA kernels are built for
    # long queries and are slow for one query row).
    grouped = queries.reshape(decode.span, keys.shape[1], -1, queries.shape[2])
    window_keys = keys.narrow(0, decode.first_slot, decode.span)[..., : decode.length]
    window_values = values.narrow(0, decode.first_slot, decode.span)[:, :, : decode.length]
    scores = torch.matmul(grouped, window_keys).mul_(scale)
    scores = scores.masked_fill_(tensors.masked, float("-inf"))
    weights = scores.softmax(dim=-1, dtype=torch.float32).to(queries.dtype)
    return torch.matmul(weights, window_values).view(decode.span, queries.shape[1], queries.shape[2])
