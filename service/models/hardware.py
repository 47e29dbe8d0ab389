"""Device and dtype selection: CUDA when present, bf16 where the hardware computes it natively."""
from __future__ import annotations

import pathlib

import torch

from service.engine.quantized import Quantization

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {requested}: no CUDA device is available")
    return device


def _cpu_has_bf16() -> bool:
    try:
        flags = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(requested: str, device: torch.device, *, embedding: bool = False) -> torch.dtype:
    """`auto`: bf16 on CUDA that supports it and on CPUs with native bf16 (AVX512-BF16, AMX);
    float32 otherwise, and for embedding models on CPU (small models, where fp32 keeps their
    similarity scores exact at little cost)."""
    if requested != "auto":
        try:
            return _DTYPES[requested]
        except KeyError:
            raise ValueError(f"--dtype must be auto or one of {', '.join(_DTYPES)}") from None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if embedding:
        return torch.float32
    return torch.bfloat16 if _cpu_has_bf16() else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def resolve_quantization(requested: str, device: torch.device, gguf_bits: int | None) -> Quantization:
    """`auto`: a 4-bit GGUF keeps its 4 bits on CPU, where decoding speed is memory traffic;
    everything else runs unquantized. The quantized kernels exist on CPU only."""
    if requested != "auto":
        quantization = Quantization(requested)
        if quantization is not Quantization.NONE and device.type != "cpu":
            raise ValueError(f"--quantization {requested} runs on CPU only; use none on {device}")
        return quantization
    if device.type == "cpu" and gguf_bits == 4:
        return Quantization.INT4
    return Quantization.NONE
