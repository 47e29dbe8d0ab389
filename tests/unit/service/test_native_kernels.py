"""tokenwire's C++ kernels (service/engine/cpu/native.py) against plain torch arithmetic: the same
numbers, each row's result independent of the others, and bad input refused."""
from __future__ import annotations

import logging
import os
import pathlib
import subprocess

import pytest
import torch

from service.engine.cpu import native, quantized
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


def _attention_reference(q, keys, values, tables, row_tables, positions, scale):
    """Each row attends to positions 0..its own of its table's blocks, in float64."""
    out = []
    for row, (table, position) in enumerate(zip(row_tables.tolist(), positions.tolist())):
        blocks = tables[table, : position // 32 + 1]
        k = keys[blocks].permute(1, 2, 0, 3).reshape(keys.shape[1], keys.shape[2], -1)[..., : position + 1].double()
        v = values[blocks].permute(1, 0, 2, 3).reshape(values.shape[1], -1, values.shape[3])[:, : position + 1].double()
        grouped = q[row].double().view(k.shape[0], -1, k.shape[1])
        out.append(((grouped @ k) * scale).softmax(dim=-1) @ v)
    return torch.stack(out).view(q.shape)


@needs_native_kernels
@pytest.mark.parametrize("heads,kv_heads,dim", [(9, 3, 64), (8, 2, 128), (4, 4, 32), (6, 1, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paged_attention_writes_the_new_keys_and_attends_through_the_block_tables(heads, kv_heads, dim, dtype):
    generator = torch.Generator().manual_seed(heads + dim)
    blocks = 12
    keys = torch.randn(blocks, kv_heads, dim, 32, generator=generator).to(dtype)
    values = torch.randn(blocks, kv_heads, 32, dim, generator=generator).to(dtype)
    # Two sequences with scattered blocks: the first gets a chunk of 3 tokens crossing a block
    # boundary (positions 31-33), the second one decode token at position 70.
    tables = torch.tensor([[7, 2, 9], [4, 11, 0]])
    row_tables, positions = torch.tensor([0, 0, 0, 1]), torch.tensor([31, 32, 33, 70])
    # q, k and v as the forward pass slices them out of one projection: rows are strided.
    qkv = torch.randn(4, heads + 2 * kv_heads, dim, generator=generator).to(dtype)
    q, k, v = qkv[:, :heads], qkv[:, heads : heads + kv_heads], qkv[:, heads + kv_heads :]
    expected_keys, expected_values = keys.clone(), values.clone()
    block = tables[row_tables, positions // 32]
    expected_keys[block, :, :, positions % 32] = k
    expected_values[block, :, positions % 32] = v

    out = torch.ops.tokenwire.paged_attention(q, k, v, keys, values, tables, row_tables, positions, dim**-0.5)

    assert torch.equal(keys, expected_keys) and torch.equal(values, expected_values)
    reference = _attention_reference(q, expected_keys, expected_values, tables, row_tables, positions, dim**-0.5)
    tolerance = 1e-5 if dtype is torch.float32 else 1e-2
    torch.testing.assert_close(out.double(), reference, rtol=tolerance, atol=tolerance)
    # Each row alone gives the same bits: a chunk's tokens, or a decode token beside others.
    for row in range(4):
        alone = torch.ops.tokenwire.paged_attention(
            q[row : row + 1], k[row : row + 1], v[row : row + 1], keys, values, tables,
            row_tables[row : row + 1], positions[row : row + 1], dim**-0.5,
        )
        assert torch.equal(alone, out[row : row + 1])


@needs_native_kernels
def test_paged_attention_at_position_0_returns_the_new_value():
    keys, values = torch.zeros(2, 1, 32, 32), torch.zeros(2, 1, 32, 32)
    q, k, v = torch.randn(1, 2, 32), torch.randn(1, 1, 32), torch.randn(1, 1, 32)
    out = torch.ops.tokenwire.paged_attention(q, k, v, keys, values, torch.tensor([[1]]), torch.tensor([0]),
                                              torch.tensor([0]), 1.0)
    torch.testing.assert_close(out, v.expand(1, 2, 32))


@needs_native_kernels
@pytest.mark.parametrize(
    "tables,position,message",
    [([[0]], 32, "out of its block table"), ([[5]], 3, "block 5 is not in the cache")],
)
def test_paged_attention_refuses_positions_and_blocks_outside_the_cache(tables, position, message):
    keys, values = torch.zeros(2, 1, 32, 32), torch.zeros(2, 1, 32, 32)
    q = torch.zeros(1, 2, 32)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.tokenwire.paged_attention(q, q[:, :1], q[:, :1], keys, values, torch.tensor(tables),
                                            torch.tensor([0]), torch.tensor([position]), 1.0)


@needs_native_kernels
@pytest.mark.parametrize("weights", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("activations", [torch.float32, torch.bfloat16])
def test_dense_linear_gives_each_row_the_same_bits_alone_or_in_any_batch(weights, activations):
    generator = torch.Generator().manual_seed(4)
    weight = torch.randn(48, 40, generator=generator).to(weights)
    packed = weight.view(3, 16, 40).transpose(1, 2).contiguous()
    x = torch.randn(23, 40, generator=generator).to(activations)
    together = torch.ops.tokenwire.dense_linear(x, packed)
    assert together.dtype == activations
    torch.testing.assert_close(together.double(), x.double() @ weight.double().T, rtol=1e-2, atol=1e-2)
    for size in (1, 2, 3, 7, 13):
        assert torch.equal(torch.ops.tokenwire.dense_linear(x[:size], packed), together[:size])
    assert torch.equal(torch.ops.tokenwire.dense_linear(x[9:10], packed), together[9:10])


def _library_files(directory: pathlib.Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


@needs_native_kernels
def test_the_library_is_built_once_and_only_this_torchs_older_builds_are_removed(tmp_path: pathlib.Path):
    own_older = f"tokenwire_kernels-{native._torch_tag()}-0123456789abcdef.so"
    other_torch = "tokenwire_kernels-9.9.9_cpu-0123456789abcdef.so"
    (tmp_path / own_older).write_bytes(b"built from older sources")
    (tmp_path / other_torch).write_bytes(b"another environment's")
    killed = tmp_path / ".build-killed.so"
    killed.write_bytes(b"half a library")
    os.utime(killed, (0, 0))  # long ago
    building = tmp_path / ".build-running.so"
    building.write_bytes(b"a build going on now")
    built = native.build(tmp_path)
    assert built.name == native.library_name() and built.stat().st_size > 0
    modified = built.stat().st_mtime_ns
    assert native.build(tmp_path) == built and built.stat().st_mtime_ns == modified
    assert _library_files(tmp_path) == sorted([".build-running.so", built.name, other_torch])


def test_a_failed_build_is_recorded_and_not_tried_again(tmp_path: pathlib.Path, monkeypatch):
    compiler = tmp_path / "failing-compiler"
    compiler.write_text("#!/bin/sh\necho 'error: this compiler fails' >&2\nexit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    with pytest.raises(subprocess.CalledProcessError):
        native.build(tmp_path)
    failed = tmp_path / pathlib.Path(native.library_name()).with_suffix(".failed").name
    assert "this compiler fails" in failed.read_text()
    compiler.write_text("#!/bin/sh\necho called > \"$0.called\"\nexit 1\n")
    with pytest.raises(OSError, match="an earlier build failed"):
        native.build(tmp_path)
    assert not (tmp_path / "failing-compiler.called").exists()


def test_without_a_compiler_torch_kernels_run_instead(tmp_path: pathlib.Path, monkeypatch, caplog):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.delenv("TOKENWIRE_KERNEL_DIR", raising=False)
    with caplog.at_level(logging.INFO):
        assert native._load(tmp_path / "kernels") is False
    assert "torch's run instead" in caplog.text


def test_on_other_machines_the_log_says_torch_kernels_run(tmp_path: pathlib.Path, monkeypatch, caplog):
    monkeypatch.setattr(native.platform, "machine", lambda: "aarch64")
    with caplog.at_level(logging.INFO):
        assert native._load(tmp_path / "kernels") is False
    assert "x86-64 only" in caplog.text and "aarch64" in caplog.text
