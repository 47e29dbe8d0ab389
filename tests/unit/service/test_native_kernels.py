"""tokenwire's C++ kernels (service/engine/native.py) against plain torch arithmetic: the same
numbers, each row's result independent of the others, and bad input refused."""
from __future__ import annotations

import pathlib

import pytest
import torch

from service.engine import native, quantized
from tests.unit.service.conftest import needs_native_kernels



def _quantized_weights(out_features: int, in_features: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (out_features, in_features), generator=generator, dtype=torch.uint8)
    groups = in_features // quantized.INT4_GROUP
    # Scales and minimums that float16 holds exactly, so the reference needs no rounding.
    scale = torch.randint(1, 64, (out_features, groups), generator=generator) / 1024
    minimum = -torch.randint(0, 64, (out_features, groups), generator=generator) / 128
    return codes, scale, minimum


def _w4a8_reference(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor) -> torch.Tensor:
    """What the kernel computes, in float64: activations rounded to int8 per row and group of 32
    (step = largest magnitude / 127), times the dequantized weights."""
    rows, width = x.shape
    groups = x.float().view(rows, -1, quantized.INT4_GROUP)
    largest = groups.abs().amax(dim=2, keepdim=True)
    inverse = torch.where(largest > 0, 127 / largest, torch.zeros_like(largest))
    activations = ((groups * inverse).round() * (largest / 127)).view(rows, width).double()
    weights = codes.double().view(codes.shape[0], -1, quantized.INT4_GROUP) * scale.double().unsqueeze(2)
    weights = (weights + minimum.double().unsqueeze(2)).view_as(codes)
    return activations @ weights.T


@needs_native_kernels
@pytest.mark.parametrize("rows", [1, 3, 8, 13, 16])
def test_w4a8_computes_int8_activations_times_4_bit_weights(rows):
    codes, scale, minimum = _quantized_weights(48, 96)
    packed = quantized._pack_w4a8(codes, scale, minimum)
    x = torch.randn(rows, 96, generator=torch.Generator().manual_seed(rows))
    ours = torch.ops.tokenwire.w4a8_linear(x, packed)
    torch.testing.assert_close(ours.double(), _w4a8_reference(x, codes, scale, minimum), rtol=1e-5, atol=1e-5)
    bf16 = torch.ops.tokenwire.w4a8_linear(x.to(torch.bfloat16), packed)
    assert bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.double(), _w4a8_reference(x.to(torch.bfloat16), codes, scale, minimum),
                               rtol=1e-2, atol=1e-2)


@needs_native_kernels
def test_w4a8_gives_each_row_the_same_result_alone_or_in_any_batch():
    codes, scale, minimum = _quantized_weights(64, 128)
    packed = quantized._pack_w4a8(codes, scale, minimum)
    x = torch.randn(19, 128, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    together = torch.ops.tokenwire.w4a8_linear(x, packed)
    alone = torch.cat([torch.ops.tokenwire.w4a8_linear(x[i : i + 1], packed) for i in range(len(x))])
    assert torch.equal(alone, together)
    assert torch.equal(torch.ops.tokenwire.w4a8_linear(x[5:14], packed), together[5:14])


@needs_native_kernels
def test_w4a8_refuses_input_of_the_wrong_width():
    codes, scale, minimum = _quantized_weights(16, 64)
    with pytest.raises(RuntimeError, match="64"):
        torch.ops.tokenwire.w4a8_linear(torch.zeros(2, 32), quantized._pack_w4a8(codes, scale, minimum))


def _attention_reference(q, keys, values, slots, positions, scale):
    out = []
    for row, (slot, position) in enumerate(zip(slots.tolist(), positions.tolist())):
        k = keys[slot, :, :, : position + 1].double()  # [kv_heads, dim, length]
        v = values[slot, :, : position + 1].double()  # [kv_heads, length, dim]
        grouped = q[row].double().view(k.shape[0], -1, k.shape[1])
        out.append(((grouped @ k) * scale).softmax(dim=-1) @ v)
    return torch.stack(out).view(q.shape)


@needs_native_kernels
@pytest.mark.parametrize("heads,kv_heads,dim", [(9, 3, 64), (8, 2, 128), (4, 4, 32), (6, 1, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_attention_writes_the_new_keys_and_attends_over_each_slots_own_length(heads, kv_heads, dim, dtype):
    generator = torch.Generator().manual_seed(heads + dim)
    slot_count, capacity, rows = 6, 96, 4
    keys = torch.randn(slot_count, kv_heads, dim, capacity, generator=generator).to(dtype)
    values = torch.randn(slot_count, kv_heads, capacity, dim, generator=generator).to(dtype)
    # q, k and v as the forward pass slices them out of one projection: rows are strided.
    qkv = torch.randn(rows, heads + 2 * kv_heads, dim, generator=generator).to(dtype)
    q, k, v = qkv[:, :heads], qkv[:, heads : heads + kv_heads], qkv[:, heads + kv_heads :]
    slots, positions = torch.tensor([4, 0, 2, 5]), torch.tensor([0, 95, 40, 17])
    expected_keys, expected_values = keys.clone(), values.clone()
    expected_keys[slots, :, :, positions] = k
    expected_values[slots, :, positions] = v

    out = torch.ops.tokenwire.decode_attention(q, k, v, keys, values, slots, positions, dim**-0.5)

    assert torch.equal(keys, expected_keys) and torch.equal(values, expected_values)
    reference = _attention_reference(q, expected_keys, expected_values, slots, positions, dim**-0.5)
    tolerance = 1e-5 if dtype is torch.float32 else 1e-2
    torch.testing.assert_close(out.double(), reference, rtol=tolerance, atol=tolerance)
    # A lone row: the same numbers, and the position-0 row attends to its new key alone.
    alone = torch.ops.tokenwire.decode_attention(q[2:3], k[2:3], v[2:3], keys, values, slots[2:3], positions[2:3],
                                                 dim**-0.5)
    assert torch.equal(alone, out[2:3])
    torch.testing.assert_close(out[0].double(), v[0].double().repeat_interleave(heads // kv_heads, dim=0))


@needs_native_kernels
def test_decode_attention_refuses_a_position_outside_the_cache():
    keys, values = torch.zeros(2, 1, 32, 16), torch.zeros(2, 1, 16, 32)
    q = torch.zeros(1, 2, 32)
    with pytest.raises(RuntimeError, match="out of the cache"):
        torch.ops.tokenwire.decode_attention(q, q[:, :1], q[:, :1], keys, values, torch.tensor([0]),
                                             torch.tensor([16]), 1.0)


@needs_native_kernels
def test_the_library_is_built_once_into_its_directory(tmp_path: pathlib.Path):
    (tmp_path / "tokenwire_kernels-0123456789abcdef.so").write_bytes(b"built from older sources")
    built = native.build(tmp_path)
    assert built.name == native.library_name() and built.stat().st_size > 0
    modified = built.stat().st_mtime_ns
    assert native.build(tmp_path) == built and built.stat().st_mtime_ns == modified
    # No temporary file left, and the older library is gone.
    assert [path.name for path in tmp_path.iterdir()] == [built.name]


def test_without_a_compiler_torch_kernels_run_instead(tmp_path: pathlib.Path, monkeypatch, caplog):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.delenv("TOKENWIRE_KERNEL_DIR", raising=False)
    assert native._load(tmp_path / "kernels") is False
    assert "torch's run instead" in caplog.text
