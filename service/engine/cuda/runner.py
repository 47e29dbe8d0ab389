"""The CUDA backend's runner: the Llama-family forward (llama_family.py says which configs) in the
serving dtype over a paged KV cache in device memory.

- Weights are taken from the transformers model one layer at a time, each projection fused (q, k,
  v and gate, up) and the model's copy freed at once, so loading peaks at the weights plus one
  layer, never twice the weights.
- Keys and values live in blocks [blocks, block_size, kv_heads, head_dim] per layer; a step writes
  each token's into its slot (block * block_size + offset) with one index copy per layer.
- Decode tokens attend through the Triton kernel of decode_attention.py, over their block tables
  in place. Prompt chunks attend through torch's scaled_dot_product_attention (a FlashAttention
  kernel for a first chunk, the memory-efficient one with a mask for later chunks) over their
  sequence's blocks.
- A step's token ids, positions, slots and tables reach the device in one copy from pinned memory,
  and the only synchronisation of a step is the sampler's reading of the chosen tokens.
- Decode-only steps of up to `max_batch` rows replay CUDA graphs, captured at start for a ladder of
  batch sizes (a step runs on the smallest that fits, padding rows attend nothing and write to a
  scratch block), so small batches are not bound by kernel launches.

Batch invariance: unlike the CPU backend, a row's arithmetic here may depend on how many rows its
step has (cuBLAS picks its kernels by shape). What holds: greedy output equals solo output under
the same batch shape, and a seeded request reproduces its tokens in the same batch. A prefix-cache
hit may change the last bits of the keys and values a sequence attends to (the prefix was computed
as a prompt chunk, not as decode steps).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from service.engine.cuda.decode_attention import paged_decode_attention, triton_runs_on
from service.engine.kv_memory import BlockRunner, blocks_for_budget, bytes_per_token
from service.engine.llama_family import fused_projection, rms_norm, rotary_table, rotate
from service.engine.types import StepEntry

log = logging.getLogger(__name__)

# Batch sizes of the captured decode graphs, up to the runner's max_batch.
_GRAPH_SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)


@dataclass(frozen=True)
class _Layer:
    input_norm: torch.Tensor
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    out: torch.Tensor
    post_norm: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor


def _take(linears: list[torch.nn.Linear], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fused projection of `linears` in `dtype`; the linears' own weights are freed."""
    weight, bias = fused_projection(linears)
    for linear in linears:
        linear.weight.data = linear.weight.data.new_empty(0)
        if linear.bias is not None:
            linear.bias.data = linear.bias.data.new_empty(0)
    return weight.to(dtype), None if bias is None else bias.to(dtype)


def _take_layer(layer: torch.nn.Module, dtype: torch.dtype) -> _Layer:
    attn, mlp = layer.self_attn, layer.mlp
    if attn.o_proj.bias is not None or mlp.down_proj.bias is not None:
        raise ValueError("biases on the output or down projection are not supported")
    qkv, qkv_bias = _take([attn.q_proj, attn.k_proj, attn.v_proj], dtype)
    return _Layer(
        input_norm=layer.input_layernorm.weight.detach().to(dtype),
        qkv=qkv,
        qkv_bias=qkv_bias,
        out=_take([attn.o_proj], dtype)[0],
        post_norm=layer.post_attention_layernorm.weight.detach().to(dtype),
        gate_up=_take([mlp.gate_proj, mlp.up_proj], dtype)[0],
        down=_take([mlp.down_proj], dtype)[0],
    )


@dataclass
class _Plan:
    """A step's tokens on the device: the first `decode` are single tokens of their own sequences
    (attending through their block tables), the rest prompt chunks."""

    ids: torch.Tensor
    positions: torch.Tensor
    slots: torch.Tensor
    decode: int
    tables: torch.Tensor  # [decode, width]
    lengths: torch.Tensor  # [decode]: positions each decode token attends (its own included)
    # (first token, size, start position, block ids tensor) of each prompt chunk.
    prompts: list[tuple[int, int, int, torch.Tensor]]
    selected: torch.Tensor  # tokens whose logits come back, in entry order


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    staging: torch.Tensor  # pinned host copy of `inputs`
    inputs: torch.Tensor  # ids, positions, slots, lengths, tables: what a replay reads
    logits: torch.Tensor


class CudaRunner(BlockRunner):
    """Runs steps of prompt chunks and decode tokens (see runner.ModelRunner for the interface)."""

    def __init__(self, model: torch.nn.Module, *, kv_cache_bytes: int, max_length: int,
                 dtype: torch.dtype | None = None, max_batch: int = 64) -> None:
        """Takes the weights of `model` (emptying its projections) and computes in `dtype` (default:
        the model's). The KV cache gets as many blocks as `kv_cache_bytes` holds; decode steps of
        up to `max_batch` rows replay CUDA graphs on a GPU."""
        config, inner = model.config, model.model
        self.device = inner.embed_tokens.weight.device
        self.kernels = "triton" if triton_runs_on(self.device) else "torch"
        self.dtype = dtype or inner.embed_tokens.weight.dtype
        first = inner.layers[0].self_attn
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = first.head_dim
        self.scale, self.eps = first.scaling, config.rms_norm_eps
        self.cos, self.sin = rotary_table(model, max_length, self.dtype)
        self.embed = inner.embed_tokens.weight.detach().to(self.dtype)
        self.final_norm = inner.norm.weight.detach().to(self.dtype)
        self.lm_head = model.lm_head.weight.detach().to(self.dtype)
        self.layers = [_take_layer(layer, self.dtype) for layer in inner.layers]
        self.token_bytes = bytes_per_token(
            layers=len(self.layers), kv_heads=self.kv_heads, head_dim=self.head_dim, dtype=self.dtype
        )
        self.blocks = blocks_for_budget(kv_cache_bytes, block_size=self.block_size, token_bytes=self.token_bytes)
        # One block more than the engine hands out: padding rows of a graph write there.
        shape = (self.blocks + 1, self.block_size, self.kv_heads, self.head_dim)
        self.keys = [torch.empty(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.values = [torch.empty(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self._scratch_slot = self.blocks * self.block_size
        self._width = math.ceil(max_length / self.block_size)  # block-table width of graphed steps
        self._graphs: dict[int, _Graph] = {}
        if self.device.type == "cuda":
            self._capture_graphs([size for size in _GRAPH_SIZES if size <= max_batch])

    @torch.inference_mode()
    def step(self, entries: list[StepEntry]) -> torch.Tensor:
        """Runs all entries in one pass; returns the float logits of each entry's last
        `logits_for` positions, in entry order ([rows, vocab])."""
        if all(len(entry.token_ids) == 1 and entry.logits_for == 1 for entry in entries):
            size = next((size for size in self._graphs if size >= len(entries)), None)
            if size is not None:
                return self._replay(self._graphs[size], entries)
        return self._forward(self._plan(entries)).float()

    def _plan(self, entries: list[StepEntry]) -> _Plan:
        """The step's tokens, single tokens first, with one host-to-device copy."""
        decode = [index for index, entry in enumerate(entries) if len(entry.token_ids) == 1]
        prompt = [index for index, entry in enumerate(entries) if len(entry.token_ids) > 1]
        width = max((-(-(entries[i].start + 1) // self.block_size) for i in decode), default=0)
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        selected_at: dict[int, list[int]] = {}
        for index in decode + prompt:
            entry, first = entries[index], len(ids)
            size = len(entry.token_ids)
            ids.extend(entry.token_ids)
            span = range(entry.start, entry.start + size)
            positions.extend(span)
            slots.extend(entry.blocks[p // self.block_size] * self.block_size + p % self.block_size for p in span)
            selected_at[index] = list(range(first + size - entry.logits_for, first + size))
        lengths = [entries[i].start + 1 for i in decode]
        tables = [entries[i].blocks[:width] + [0] * (width - len(entries[i].blocks[:width])) for i in decode]
        prompt_blocks = [entries[i].blocks[: -(-(entries[i].start + len(entries[i].token_ids)) // self.block_size)]
                         for i in prompt]
        selected = [token for index in range(len(entries)) for token in selected_at[index]]
        host = torch.tensor(
            ids + positions + slots + lengths + [b for row in tables for b in row]
            + [b for blocks in prompt_blocks for b in blocks] + selected,
            dtype=torch.long,
        )
        values = host.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else host
        tokens = len(ids)
        ids_t, positions_t, slots_t, lengths_t, tables_t, blocks_t, selected_t = values.split(
            [tokens, tokens, tokens, len(decode), len(decode) * width, sum(map(len, prompt_blocks)), len(selected)]
        )
        prompts, first, offset = [], len(decode), 0
        for index, blocks in zip(prompt, prompt_blocks):
            size = len(entries[index].token_ids)
            prompts.append((first, size, entries[index].start, blocks_t[offset : offset + len(blocks)]))
            first, offset = first + size, offset + len(blocks)
        return _Plan(ids_t, positions_t, slots_t, len(decode), tables_t.view(len(decode), width), lengths_t,
                     prompts, selected_t)

    def _forward(self, plan: _Plan) -> torch.Tensor:
        """Logits (in the serving dtype) of the plan's selected tokens; writes every token's keys
        and values into its slot."""
        cos, sin = self.cos[plan.positions].unsqueeze(1), self.sin[plan.positions].unsqueeze(1)
        hidden = F.embedding(plan.ids, self.embed)
        heads, kv_heads = self.heads, self.kv_heads
        for layer, keys, values in zip(self.layers, self.keys, self.values):
            x = self._norm(hidden, layer.input_norm)
            qkv = F.linear(x, layer.qkv, layer.qkv_bias).view(-1, heads + 2 * kv_heads, self.head_dim)
            qk = rotate(qkv[:, : heads + kv_heads], cos, sin)
            q, k, v = qk[:, :heads], qk[:, heads:], qkv[:, heads + kv_heads :]
            keys.view(-1, kv_heads, self.head_dim).index_copy_(0, plan.slots, k)
            values.view(-1, kv_heads, self.head_dim).index_copy_(0, plan.slots, v)
            attended = self._attend(plan, q, keys, values)
            hidden = hidden + F.linear(attended.flatten(1), layer.out)
            gate, up = F.linear(self._norm(hidden, layer.post_norm), layer.gate_up).chunk(2, dim=-1)
            hidden = hidden + F.linear(F.silu(gate) * up, layer.down)
        selected = hidden.index_select(0, plan.selected)
        return F.linear(self._norm(selected, self.final_norm), self.lm_head)

    def _attend(self, plan: _Plan, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        if not plan.prompts:
            return paged_decode_attention(q, keys, values, plan.tables, plan.lengths, self.scale)
        out = torch.empty_like(q)
        if plan.decode:
            out[: plan.decode] = paged_decode_attention(
                q[: plan.decode], keys, values, plan.tables, plan.lengths, self.scale
            )
        for first, size, start, blocks in plan.prompts:
            end = start + size
            # [1, heads, positions, head_dim]
            seq_keys = keys[blocks].flatten(0, 1)[:end].transpose(0, 1).unsqueeze(0)
            seq_values = values[blocks].flatten(0, 1)[:end].transpose(0, 1).unsqueeze(0)
            queries = q[first : first + size].transpose(0, 1).unsqueeze(0)
            mask = None
            if start:  # later chunks see the cached positions too, and their own causally
                mask = torch.arange(end, device=q.device) <= torch.arange(start, end, device=q.device).unsqueeze(1)
            attended = F.scaled_dot_product_attention(
                queries, seq_keys, seq_values, attn_mask=mask, is_causal=not start, scale=self.scale, enable_gqa=True
            )
            out[first : first + size] = attended[0].transpose(0, 1)
        return out

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, weight, self.eps)

    def _graph_inputs(self, inputs: torch.Tensor, rows: int) -> _Plan:
        ids, positions, slots, lengths, tables = inputs.split([rows, rows, rows, rows, rows * self._width])
        return _Plan(ids, positions, slots, rows, tables.view(rows, self._width), lengths, [],
                     torch.arange(rows, device=self.device))

    def _capture_graphs(self, sizes: list[int]) -> None:
        """Captures a decode step of each size, largest first, sharing one memory pool."""
        pool = torch.cuda.graph_pool_handle()
        for rows in sorted(sizes, reverse=True):
            staging = self._padding_inputs(rows).pin_memory()
            inputs = staging.to(self.device)
            plan = self._graph_inputs(inputs, rows)
            with torch.inference_mode():
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    self._forward(plan)  # warm-up: Triton compiles, cuBLAS picks its kernels
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    logits = self._forward(plan).float()
            self._graphs[rows] = _Graph(graph, staging, inputs, logits)
        self._graphs = dict(sorted(self._graphs.items()))
        log.info("captured CUDA graphs of decode steps for batch sizes %s", ", ".join(map(str, self._graphs)))

    def _padding_inputs(self, rows: int) -> torch.Tensor:
        """Inputs of `rows` padding rows: token 0, attending nothing, written to the scratch slot."""
        inputs = torch.zeros(4 * rows + rows * self._width, dtype=torch.long)
        inputs[2 * rows : 3 * rows] = self._scratch_slot
        return inputs

    def _replay(self, graph: _Graph, entries: list[StepEntry]) -> torch.Tensor:
        """The graph of `entries`' batch size run on them. A table row keeps stale block ids past
        its sequence's blocks: the kernel reads only as far as the row's length."""
        rows, used = len(graph.logits), len(entries)
        ids, positions, slots, lengths = [0] * rows, [0] * rows, [self._scratch_slot] * rows, [0] * rows
        tables = graph.staging[4 * rows :].view(rows, self._width)
        for row, entry in enumerate(entries):
            ids[row], positions[row] = entry.token_ids[0], entry.start
            block, offset = divmod(entry.start, self.block_size)
            slots[row] = entry.blocks[block] * self.block_size + offset
            lengths[row] = entry.start + 1
            tables[row, : block + 1] = torch.tensor(entry.blocks[: block + 1])
        graph.staging[: 4 * rows] = torch.tensor(ids + positions + slots + lengths)
        graph.inputs.copy_(graph.staging, non_blocking=True)
        graph.graph.replay()
        return graph.logits[:used]  # overwritten by the next replay, as ModelRunner.step allows
