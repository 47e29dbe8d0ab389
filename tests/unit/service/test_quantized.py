"""The linear layers: each row's result is its own, whatever the rows beside it, and close to the
unquantized product."""
from __future__ import annotations

import pytest
import torch

from service.engine.cpu import quantized
from service.engine.cpu.quantized import Linear, Quantization
from tests.unit.service.conftest import needs_native_kernels

# Each case is one kernel: tokenwire's own where they build here, torch's everywhere.
KERNELS = [
    pytest.param(Quantization.NONE, "dense", id="dense", marks=needs_native_kernels),
    pytest.param(Quantization.INT8, "int8", id="int8"),
    pytest.param(Quantization.INT4, "w4a8", id="w4a8", marks=needs_native_kernels),
    pytest.param(Quantization.INT4, "int4", id="int4-torch"),
]


def _linear(weight, bias, mode, kernel, request) -> Linear:
    if kernel in ("int4", "torch-dense"):
        request.getfixturevalue("without_native_kernels")
    linear = Linear(weight, bias, mode, torch.bfloat16)
    assert linear.kernel == kernel
    return linear


def _weights(out_features: int = 96, in_features: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(out_features, in_features, generator=generator) / in_features**0.5
    rows = torch.randn(16, in_features, generator=generator).to(torch.bfloat16)
    return weight, rows


@pytest.mark.parametrize("mode,kernel", KERNELS)
def test_each_row_gets_the_same_result_in_any_batch(mode, kernel, request):
    weight, rows = _weights()
    linear = _linear(weight, torch.randn(96), mode, kernel, request)
    together = linear(rows)
    for size in (1, 2, 5, 9):
        assert torch.equal(linear(rows[:size]), together[:size])
    assert torch.equal(linear(rows[7:8]), together[7:8])


@pytest.mark.parametrize("mode,kernel", KERNELS)
def test_the_quantized_product_is_close_to_the_dense_one(mode, kernel, request):
    weight, rows = _weights()
    linear = _linear(weight, None, mode, kernel, request)
    exact = rows.float() @ weight.T
    error = (linear(rows) - exact).norm() / exact.norm()
    # 8 bits: weights and activations each round to 1/254 of their row's range; 4 bits: 1/15 of
    # a group's range.
    assert error < (0.02 if mode is Quantization.INT8 else 0.12)


@pytest.mark.parametrize("out_features,dtype,kernel", [(88, torch.bfloat16, "int8"), (96, torch.float16, "int4")])
def test_int4_layers_that_w4a8_cannot_take(out_features, dtype, kernel):
    """The int4 kernels need whole blocks of 16 output channels (int8 runs instead); w4a8 needs
    float32 or bf16 activations (torch's int4 kernel runs instead)."""
    weight, rows = _weights(out_features)
    linear = Linear(weight, None, Quantization.INT4, dtype)
    assert linear.kernel == kernel
    exact = rows.float() @ weight.T
    assert (linear(rows.to(dtype)) - exact).norm() / exact.norm() < 0.12


def test_int8_activations_are_quantized_per_row_not_per_batch():
    """A row of large values beside a row of small ones must not crush the small row's codes."""
    weight, rows = _weights()
    linear = Linear(weight, None, Quantization.INT8, torch.bfloat16)
    assert linear.kernel == "int8"  # oneDNN's int8 product is in every x86 build of torch
    mixed = torch.cat([rows[:1] * 1000, rows[1:2] / 1000])
    exact = mixed.float() @ weight.T
    result = linear(mixed)
    for row in range(2):
        assert (result[row] - exact[row]).norm() / exact[row].norm() < 0.02


def test_int8_runs_weight_only_where_onednn_lacks_the_int8_product(monkeypatch):
    monkeypatch.setattr(quantized, "_onednn_int8_works", lambda: False)
    weight, rows = _weights()
    linear = Linear(weight, None, Quantization.INT8, torch.bfloat16)
    assert linear.kernel == "int8-weight-only"
    exact = rows.float() @ weight.T
    assert (linear(rows) - exact).norm() / exact.norm() < 0.02


def test_unquantized_layers_take_torchs_product_where_tokenwires_kernel_does_not_run(without_native_kernels):
    weight, rows = _weights()
    linear = Linear(weight, None, Quantization.NONE, torch.bfloat16)
    assert linear.kernel == "torch-dense"
    assert torch.equal(linear(rows), torch.nn.functional.linear(rows, weight.to(torch.bfloat16)))
