"""The CUDA backend's runner against transformers on tiny random models of each variant the
reference models use. On CPU (every run) its decode attention is torch's arithmetic; on a GPU
(`pytest -m gpu`) the Triton kernel and the CUDA graphs run. With the triton package installed,
TRITON_INTERPRET=1 runs the Triton kernel on CPU too (slowly; the interpreter cannot take bf16
products, triton-lang/triton#11584, so its tensor-core path checks there in float16 only)."""
from __future__ import annotations

import copy

import pytest
import torch

from service.engine.cpu.llama import LlamaRunner
from service.engine.cuda.decode_attention import paged_decode_attention
from service.engine.cuda.runner import CudaRunner
from service.engine.runner import create_runner

from .test_llama_runner import (
    KV_CACHE_BYTES,
    VARIANTS,
    _entry,
    _greedy,
    _random_model,
    _reference,
    batched_and_solo_logits,
)

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu,
                                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]),
]


def _runner(model: torch.nn.Module, device: str, **kwargs) -> CudaRunner:
    """A runner on its own copy of `model` (it empties the projections it takes)."""
    return CudaRunner(copy.deepcopy(model).to(device), kv_cache_bytes=KV_CACHE_BYTES, max_length=256, **kwargs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_and_greedy_tokens_match_transformers(variant, device):
    model = _random_model(VARIANTS[variant])
    prompt = torch.randint(3, 256, (70,), generator=torch.Generator().manual_seed(2)).tolist()
    runner = _runner(model, device)
    ours = torch.cat([
        runner.step([_entry(1, prompt[:40], 0, logits_for=40)]),  # a first chunk
        runner.step([_entry(1, prompt[40:69], 40, logits_for=29)]),  # a chunk after cached blocks
        runner.step([_entry(1, prompt[69:], 69)]),  # a decode step
    ])
    with torch.inference_mode():
        theirs = model(torch.tensor([prompt])).logits[0]
    torch.testing.assert_close(ours.cpu(), theirs, atol=1e-4, rtol=1e-4)
    assert _greedy(_runner(model, device), prompt[:45], 16, chunk=20) == _reference(model, prompt[:45], 16)


@pytest.mark.parametrize("device", DEVICES)
def test_a_batched_step_gives_each_row_its_solo_logits_to_rounding(device):
    batched, solo = batched_and_solo_logits(_runner(_random_model(VARIANTS["gqa"]), device))
    # The GPU's products may round a row differently beside other rows (see cuda/runner.py).
    torch.testing.assert_close(batched, solo, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])  # bf16: tensor cores
@pytest.mark.parametrize("device", DEVICES)
def test_decode_attention_reads_each_rows_blocks_in_place(device, dtype):
    generator = torch.Generator().manual_seed(3)
    blocks, block_size, kv_heads, group, head_dim = 12, 32, 2, 4, 64
    keys = torch.randn(blocks, block_size, kv_heads, head_dim, generator=generator).to(device, dtype)
    values = torch.randn(blocks, block_size, kv_heads, head_dim, generator=generator).to(device, dtype)
    tables = torch.tensor([[7, 2, 9, 0], [4, 0, 0, 0], [11, 3, 5, 1]], device=device)
    lengths = torch.tensor([70, 1, 0], device=device)  # the last row attends nothing
    # q as the runner has it: a view into the step's fused q, k, v projections.
    q = torch.randn(3, (group + 2) * kv_heads, head_dim, generator=generator).to(device, dtype)[:, : group * kv_heads]
    out = paged_decode_attention(q, keys, values, tables, lengths, scale=0.125).float()
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    for row in range(2):
        length = int(lengths[row])
        row_keys = keys[tables[row]].flatten(0, 1)[:length].float()  # [length, kv_heads, head_dim]
        row_values = values[tables[row]].flatten(0, 1)[:length].float()
        for head in range(kv_heads * group):
            weights = (row_keys[:, head // group] @ q[row, head].float() * 0.125).softmax(0)
            expected = weights @ row_values[:, head // group]
            torch.testing.assert_close(out[row, head], expected, atol=tolerance, rtol=tolerance)
    assert torch.equal(out[2], torch.zeros_like(out[2]))


@pytest.mark.parametrize("device", DEVICES)
def test_a_copied_block_holds_the_same_keys_and_values(device):
    runner = _runner(_random_model(VARIANTS["gqa"]), device)
    runner.step([_entry(1, list(range(3, 40)), 0)])
    runner.copy_block(8, 30)
    assert all(torch.equal(keys[30], keys[8]) and torch.equal(values[30], values[8])
               for keys, values in zip(runner.keys, runner.values))


def test_the_runner_frees_the_models_projections_as_it_takes_them():
    """Loading peaks at the weights plus one layer: the model's projections are emptied."""
    model = _random_model(VARIANTS["qkv_bias"])
    CudaRunner(model, kv_cache_bytes=KV_CACHE_BYTES, max_length=64)
    for layer in model.model.layers:
        projections = [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                       layer.self_attn.o_proj, layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj]
        assert all(p.weight.numel() == 0 and (p.bias is None or p.bias.numel() == 0) for p in projections)


def test_cpu_models_get_the_cpu_backend():
    runner = create_runner(_random_model(VARIANTS["gqa"]), kv_cache_bytes=KV_CACHE_BYTES, max_length=64)
    assert isinstance(runner, LlamaRunner)
