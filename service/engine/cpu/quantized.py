"""The model's linear layers: weights in the model dtype, or kept in 4 or 8 bits for CPU serving.

A decode step reads every weight once for a handful of rows, so on CPU its time is memory
traffic and per-weight arithmetic: fewer bytes per weight, faster tokens. Prompt rows go through
the same kernel as decode rows, and every kernel computes a row alike whatever the rows beside
it: a token's keys and values must not depend on whether it came in a prompt or was generated,
or in which batch, or reusing cached blocks (and recomputing preempted sequences) would change
the output.

- Unquantized: "dense", tokenwire's kernel (dense.cpp), one fixed order of sums per output; where
  it does not run, torch's product ("torch-dense"), whose last bits can depend on the number of
  rows on some CPUs.

- int4: weights in groups of 32 with a scale and a minimum per group. The format holds a GGUF's
  4-bit blocks (Q4_0/Q4_1: 32 weights, a scale and a minimum) without further loss apart from
  rounding the scales to 16 bits, so a 4-bit GGUF runs at its own precision. Two kernels:
  - "w4a8", tokenwire's own (w4a8.cpp, built on first use by native.py): activations quantized
    to int8 per row and group of 32, integer dot products on AVX512-VNNI, as llama.cpp computes
    Q4_1 weights, for prompts as for decoding.
  - "int4", where that kernel cannot be built or run: torch's weight-only kernel computes in the
    activations' dtype and dequantizes the weights again for every 4 rows (slow for prompts; the
    worker's `--quantization auto` does not pick it).
- int8: weights with a scale per output channel, times activations quantized to 8 bits per row
  at run time, through oneDNN's int8 matrix product. The integer sums are exact, so a row's
  result never depends on the rows beside it. Where this torch build cannot run oneDNN's int8
  product exactly (checked once, at the first int8 layer), the weight-only int8 kernel runs
  instead.

Quantizing full-precision weights is lossy; `--quantization none` keeps them as they are.
"""

import enum
import functools
from typing import Final, List, Optional, Union

import torch
import torch.nn.functional as F

from service.engine.cpu import native

INT4_GROUP = 32
# tokenwire's kernels and torch's int4 kernel take output channels in blocks of 16.
_CHANNEL_BLOCK = 16
# The activations (and unquantized weights) tokenwire's kernels take.
_NATIVE_DTYPES = (torch.bfloat16, torch.float32)
# Activations go to oneDNN as uint8 around this zero point: codes -127..127 become 1..255.
_ACTIVATION_ZERO = 128


class Quantization(enum.Enum):
    NONE = "none"
    INT8 = "int8"
    INT4 = "int4"


class Linear(torch.nn.Module):
    """y = x @ W.T + b, with W in the model dtype, int8 or int4.

    Every row goes through the one kernel of the layer, and every kernel here computes each row
    alike, whatever the rows beside it: a sequence's tokens do not change with its partners.

    A TorchScript-compatible module: the Llama runner compiles its whole forward pass (see
    llama.py)."""

    # "dense" (tokenwire's), "torch-dense", "int8" (int8 activations), "int8-weight-only", "w4a8"
    # or "int4" (torch's) (a str: TorchScript compiles no Literal)
    kernel: Final[str]
    bias: Optional[torch.Tensor]
    # TorchScript reads module constants, not globals.
    int4_group: Final[int] = INT4_GROUP
    activation_zero: Final[int] = _ACTIVATION_ZERO

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, mode: Quantization, dtype: torch.dtype) -> None:
        """`weight` [out, in] in full precision (float32 keeps a GGUF's grid exact)."""
        super().__init__()
        weight = weight.detach()
        self.bias = bias.detach().to(dtype) if bias is not None else None
        # What the chosen kernel reads; empty for the kernels that do not use them.
        self.dense = self.packed = self.scale = self.zero_points = torch.empty(0)
        if mode is Quantization.INT4 and (weight.shape[1] % INT4_GROUP or weight.shape[0] % _CHANNEL_BLOCK):
            mode = Quantization.INT8  # the int4 kernels need whole groups and blocks of channels
        weight = weight.float()
        if mode is Quantization.NONE:
            if dtype in _NATIVE_DTYPES and weight.shape[0] % _CHANNEL_BLOCK == 0 and native.available():
                self.kernel = "dense"
                self.packed = weight.to(dtype).view(-1, _CHANNEL_BLOCK, weight.shape[1]).transpose(1, 2).contiguous()
            else:
                self.kernel = "torch-dense"
                self.dense = weight.to(dtype)
        elif mode is Quantization.INT8:
            scale = weight.abs().amax(dim=1).clamp(min=1e-8) / 127
            codes = (weight / scale.unsqueeze(1)).round().clamp(-127, 127).to(torch.int8)
            if _onednn_int8_works():
                self.kernel = "int8"
                self.packed = torch.ops.onednn.qlinear_prepack(codes, None)
                self.scale = scale
                self.zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
            else:
                self.kernel = "int8-weight-only"
                self.packed, self.scale = codes, scale.to(torch.bfloat16)
        else:
            groups = weight.view(weight.shape[0], -1, INT4_GROUP)
            low, high = groups.amin(dim=2), groups.amax(dim=2)
            scale = ((high - low) / 15).clamp(min=1e-8)
            codes = ((groups - low.unsqueeze(2)) / scale.unsqueeze(2)).round().clamp(0, 15).view_as(weight)
            if dtype in _NATIVE_DTYPES and native.available():
                self.kernel = "w4a8"
                self.packed = _pack_w4a8(codes.to(torch.uint8), scale, low)
            else:
                self.kernel = "int4"
                self.packed = torch._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)
                # The kernel computes (code - 8) * scale + zero; scale and zero side by side.
                zero = low + 8 * scale
                self.scale = torch.stack([scale, zero], dim=2).transpose(0, 1).contiguous().to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "torch-dense":
            return self._torch_dense(x)
        if self.kernel == "dense":
            y = torch.ops.tokenwire.dense_linear(x, self.packed)
        elif self.kernel == "int8":
            y = _int8_product(x, self.packed, self.scale, self.zero_points, self.activation_zero)
        elif self.kernel == "int8-weight-only":
            y = torch._weight_int8pack_mm(x, self.packed, self.scale)
        elif self.kernel == "w4a8":
            y = torch.ops.tokenwire.w4a8_linear(x, self.packed)
        else:
            y = torch._weight_int4pack_mm_for_cpu(x, self.packed, self.int4_group, self.scale)
        bias = self.bias
        return y if bias is None else y + bias

    def _torch_dense(self, x: torch.Tensor) -> torch.Tensor:
        """torch's product, where tokenwire's kernel does not run. Its kernels depend on the
        number of rows, and on some CPUs so do a row's last bits."""
        if x.shape[0] == 1:
            # A lone row runs as two: the bf16 matrix-vector kernels round differently from the
            # matrix ones.
            return F.linear(x.expand(2, -1), self.dense, self.bias)[:1]
        return F.linear(x, self.dense, self.bias)


def _pack_w4a8(codes: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor) -> torch.Tensor:
    """codes [out, in] (0..15), scale and minimum [out, in / 32] into w4a8.cpp's blocks:
    [out / 16, in / 32, 320] bytes."""
    blocks, groups = codes.shape[0] // _CHANNEL_BLOCK, codes.shape[1] // INT4_GROUP
    # [block, channel, group, vector, pair, byte] -> [block, group, vector, pair, channel, byte]: vector
    # v, pair p holds inputs 8v + 4p .. 8v + 4p + 3, four bytes per channel.
    lanes = codes.view(blocks, _CHANNEL_BLOCK, groups, 4, 2, 4).permute(0, 2, 3, 4, 1, 5)
    nibbles = (lanes[:, :, :, 0] | (lanes[:, :, :, 1] << 4)).reshape(blocks, groups, -1)

    def per_block(values: torch.Tensor) -> torch.Tensor:  # [out, groups] -> [block, group, 32 bytes]
        halves = values.to(torch.float16).view(blocks, _CHANNEL_BLOCK, groups).transpose(1, 2).contiguous()
        return halves.view(torch.uint8)

    return torch.cat([nibbles, per_block(scale), per_block(minimum)], dim=2).contiguous()


def _int8_product(
    x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, zero_points: torch.Tensor, activation_zero: int
) -> torch.Tensor:
    """x [rows, in] times int8 weights prepacked for oneDNN, with per-channel `scale`. Each row
    is quantized with its own step (its largest magnitude / 127), to uint8 codes around
    `activation_zero`; the integer sums come back multiplied by the weight scales, then by the
    row's step."""
    step = x.abs().amax(dim=1, keepdim=True).float().clamp_(min=1e-8).div_(127)
    codes = (x.float() / step).round_().add_(activation_zero).to(torch.uint8)
    no_post_op_args: List[Optional[Union[int, float, complex]]] = []  # a list of Scalar?
    y = torch.ops.onednn.qlinear_pointwise(
        codes, 1.0, activation_zero, packed, scale, zero_points, None, 1.0, 0, torch.float32, "none",
        no_post_op_args, "",
    )
    return y.mul_(step).to(x.dtype)


@functools.cache
def _onednn_int8_works() -> bool:
    """Whether this torch build runs oneDNN's int8 product here, and exactly."""
    weight = torch.arange(-6, 6, dtype=torch.int8).view(3, 4)
    x = torch.tensor([[127.0, -127.0, 64.0, 3.0]])  # a step of 1: the codes are x itself
    try:
        packed = torch.ops.onednn.qlinear_prepack(weight, None)
        y = _int8_product(x, packed, torch.ones(3), torch.zeros(3, dtype=torch.long), _ACTIVATION_ZERO)
    except (RuntimeError, AttributeError):
        return False
    return torch.equal(y, x @ weight.float().T)
