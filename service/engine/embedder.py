"""Sentence embeddings: encoder forward, pooling, optional truncation and L2 normalization.

Forward passes run on one dedicated thread, never on the event loop. Inputs are sorted by
length before batching to limit padding.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import torch


class Embedder:
    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        *,
        pad_token_id: int,
        pooling: str = "mean",
        normalize: bool = True,
        max_batch: int = 32,
    ) -> None:
        if pooling not in ("mean", "cls"):
            raise ValueError(f"unsupported pooling {pooling!r}")
        self.model = model
        self.device = device
        self.pooling = pooling
        self.normalize_by_default = normalize
        self._pad = pad_token_id
        self._max_batch = max_batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenwire-embed")

    async def embed(
        self, inputs: list[list[int]], *, normalize: bool | None = None, dimensions: int | None = None
    ) -> torch.Tensor:
        """Embeds token-id inputs; returns a float32 CPU tensor [len(inputs), dimension]."""
        loop = asyncio.get_running_loop()
        pooled = await loop.run_in_executor(self._executor, self._embed_all, inputs)
        if dimensions:
            pooled = pooled[:, :dimensions]
        if self.normalize_by_default if normalize is None else normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
        return pooled

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    @torch.inference_mode()
    def _embed_all(self, inputs: list[list[int]]) -> torch.Tensor:
        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
        out: list[torch.Tensor | None] = [None] * len(inputs)
        for start in range(0, len(order), self._max_batch):
            chunk = order[start : start + self._max_batch]
            for i, vector in zip(chunk, self._embed_batch([inputs[i] for i in chunk])):
                out[i] = vector
        return torch.stack(out)  # type: ignore[arg-type]

    def _embed_batch(self, batch: list[list[int]]) -> torch.Tensor:
        width = max(len(ids) for ids in batch)
        ids = torch.full((len(batch), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, tokens in enumerate(batch):
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return pooled.cpu()
