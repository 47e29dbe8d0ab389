"""Device and dtype selection: CUDA when present, bf16 where the hardware computes it natively."""
from __future__ import annotations

import os
import pathlib

import torch

from service.config import (
    DEFAULT_CPU_KV_CACHE_GIB,
    DEFAULT_CPU_KV_CACHE_SHARE,
    DEFAULT_CUDA_KV_CACHE_FRACTION,
    MemoryBudget,
)
from service.engine.cpu.quantized import Quantization

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_device(requested: str) -> torch.device:
    """The --device value as a device of this machine; ValueError when it has no such device."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ValueError("expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"this machine has {torch.cuda.device_count()} CUDA devices")
    elif device.type != "cpu":
        raise ValueError("expected auto, cpu, cuda or cuda:N")
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
            raise ValueError(f"expected auto or one of {', '.join(_DTYPES)}") from None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if embedding:
        return torch.float32
    return torch.bfloat16 if _cpu_has_bf16() else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def resolve_quantization(
    requested: str, device: torch.device, gguf_bits: int | None, native_kernels: bool
) -> Quantization:
    """`auto`: a 4-bit GGUF keeps its 4 bits on CPU where tokenwire's int4 kernel runs
    (`native_kernels`), as decoding speed there is memory traffic; everything else runs
    unquantized (torch's int4 kernel is slow for prompts, which go through the same kernel as
    decoding). The quantized kernels exist on CPU only."""
    if requested != "auto":
        quantization = Quantization(requested)
        if quantization is not Quantization.NONE and device.type != "cpu":
            raise ValueError(f"runs on CPU only; use none on {device}")
        return quantization
    if device.type == "cpu" and gguf_bits == 4 and native_kernels:
        return Quantization.INT4
    return Quantization.NONE


def kv_cache_bytes(budget: MemoryBudget, device: torch.device) -> int:
    """The bytes of one model's KV cache: --kv-cache-memory as given, or a share of the memory
    left (on CUDA, free device memory after the weights; on CPU, available RAM); `auto`:
    min(DEFAULT_CPU_KV_CACHE_GIB, DEFAULT_CPU_KV_CACHE_SHARE of RAM) on CPU,
    DEFAULT_CUDA_KV_CACHE_FRACTION of free device memory on CUDA."""
    if budget.bytes is not None:
        return budget.bytes
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * (budget.fraction or DEFAULT_CUDA_KV_CACHE_FRACTION))
    page = os.sysconf("SC_PAGE_SIZE")
    if budget.fraction is not None:
        return int(os.sysconf("SC_AVPHYS_PAGES") * page * budget.fraction)
    return min(DEFAULT_CPU_KV_CACHE_GIB * 2**30, int(os.sysconf("SC_PHYS_PAGES") * page * DEFAULT_CPU_KV_CACHE_SHARE))
