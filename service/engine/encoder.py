"""Forward passes for the embedder: the CPU backend's lean BERT encoder, or transformers' forward
on other devices and for every other architecture. Both turn a batch of token-id inputs into pooled vectors."""
from __future__ import annotations

import logging
from typing import Protocol

import torch

from service.engine.cpu.bert import BertEncoder, lean_encoder_problem

log = logging.getLogger(__name__)


class Encoder(Protocol):
    # Whether a pass pads its inputs to the longest (passes of similar lengths are cheaper).
    pads: bool

    def __call__(self, batch: list[list[int]]) -> torch.Tensor:
        """Pooled, not normalized, float vectors [len(batch), hidden]."""


class TransformersEncoder:
    """transformers' forward on the batch padded to its longest input, then pooled: any encoder
    transformers can load runs on it."""

    pads = True

    def __init__(self, model: torch.nn.Module, pooling: str, pad_token_id: int) -> None:
        self.model = model
        self.pooling = pooling
        self._pad = pad_token_id
        self._device = next(model.parameters()).device

    def __call__(self, batch: list[list[int]]) -> torch.Tensor:
        width = max(len(ids) for ids in batch)
        ids = torch.full((len(batch), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, tokens in enumerate(batch):
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        ids, mask = ids.to(self._device), mask.to(self._device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def create_encoder(model: torch.nn.Module, *, pooling: str, pad_token_id: int) -> Encoder:
    """The lean encoder where the architecture allows it, else transformers' forward.
    `pooling`: "mean" or "cls"."""
    if pooling not in ("mean", "cls"):
        raise ValueError(f"unsupported pooling {pooling!r}")
    problem = lean_encoder_problem(model.config)
    if problem is None and next(model.parameters()).device.type != "cpu":
        problem = "a device other than the CPU"
    if problem is None:
        return BertEncoder(model, pooling)
    log.info("%s runs on transformers' forward (%s is not supported by the lean encoder)",
             type(model).__name__, problem)
    return TransformersEncoder(model, pooling, pad_token_id)
