"""What every backend's lean forward takes from a transformers Llama-family model (Llama 2/3.x,
SmolLM, Qwen2, Mistral, Yi): which configs it can run, the projections it fuses, and the rotary
table the model's own rotary module computes (so llama3, linear and YaRN scaling come for free)."""
from __future__ import annotations

import torch

_SUPPORTED_TYPES = {"llama", "qwen2", "mistral"}
_STATIC_ROPE_TYPES = {"default", "linear", "llama3", "yarn"}


def lean_support_problem(config: object) -> str | None:
    """Why this config cannot run on a lean forward (None when it can)."""
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


def fused_projection(linears: list[torch.nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight and bias of one projection computing several of the same input (q, k, v or
    gate, up); a missing bias among biased projections is zeros."""
    weight = torch.cat([linear.weight.detach() for linear in linears])
    if all(linear.bias is None for linear in linears):
        return weight, None
    return weight, torch.cat([
        linear.bias.detach() if linear.bias is not None else linear.weight.new_zeros(linear.out_features)
        for linear in linears
    ])


def rotary_table(model: torch.nn.Module, max_length: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [max_length, head_dim] of every position, from the model's rotary module."""
    inner = model.model
    device = inner.embed_tokens.weight.device
    positions = torch.arange(max_length, device=device).unsqueeze(0)
    probe = torch.empty((), device=device, dtype=torch.float32)
    with torch.no_grad():
        cos, sin = inner.rotary_emb(probe, positions)
    return cos[0].to(dtype), sin[0].to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of `x` [tokens, heads, head_dim] with its tokens' cos and sin."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm as transformers computes it: normalized in float32, scaled in the model dtype."""
    return torch.rms_norm(x.float(), [x.shape[-1]], None, eps).to(x.dtype) * weight
