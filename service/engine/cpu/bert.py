"""A lean forward pass for BERT encoders (BERT, MiniLM, the all-* sentence-transformers models)
over packed tokens.

Padding a batch of sentences to its longest one spends the linear layers' work, most of an
encoder's time, on pad tokens as well. Here the tokens of all the sentences are packed into one
[tokens, hidden] matrix for the embeddings, the linear layers and the norms; only attention
sees them padded, [sentences, heads, longest, head_dim], and pooling reads the packed rows.
Measured on all-MiniLM-L6-v2 (2 cores, bench sentences in batches of 32): 465-478 sentences/s
against 386-409/s for transformers' forward in length-sorted passes of 16.

Like the Llama runner, it runs as TorchScript (see torchscript.py).
"""
from typing import Final, List

import torch
import torch.nn.functional as F

from service.engine.cpu.torchscript import script


def lean_encoder_problem(config: object) -> str | None:
    """Why this config cannot run on the lean encoder (None when it can)."""
    model_type = getattr(config, "model_type", None)
    if model_type != "bert":
        return f"model type {model_type!r}"
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return "a decoder"
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return f"position embeddings {config.position_embedding_type!r}"  # type: ignore[attr-defined]
    if getattr(config, "hidden_act", "gelu") != "gelu":
        return f"activation {config.hidden_act!r}"  # type: ignore[attr-defined]
    return None


class _Norm(torch.nn.Module):
    def __init__(self, norm: torch.nn.LayerNorm) -> None:
        super().__init__()
        self.weight, self.bias = norm.weight.detach(), norm.bias.detach()
        self.eps: Final[float] = norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, [x.shape[-1]], self.weight, self.bias, self.eps)


class _Layer(torch.nn.Module):
    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        attention = layer.attention
        projections = [attention.self.query, attention.self.key, attention.self.value]
        self.qkv_weight = torch.cat([p.weight for p in projections]).detach()
        self.qkv_bias = torch.cat([p.bias for p in projections]).detach()
        self.out_weight = attention.output.dense.weight.detach()
        self.out_bias = attention.output.dense.bias.detach()
        self.attention_norm = _Norm(attention.output.LayerNorm)
        self.up_weight = layer.intermediate.dense.weight.detach()
        self.up_bias = layer.intermediate.dense.bias.detach()
        self.down_weight = layer.output.dense.weight.detach()
        self.down_bias = layer.output.dense.bias.detach()
        self.output_norm = _Norm(layer.output.LayerNorm)


class _Forward(torch.nn.Module):
    heads: Final[int]
    cls_pooling: Final[bool]

    def __init__(self, model: torch.nn.Module, pooling: str) -> None:
        super().__init__()
        embeddings = model.embeddings
        self.heads = model.config.num_attention_heads
        self.cls_pooling = pooling == "cls"
        self.words = embeddings.word_embeddings.weight.detach()
        self.positions = embeddings.position_embeddings.weight.detach()
        self.token_type = embeddings.token_type_embeddings.weight[0].detach()  # one segment
        self.embedding_norm = _Norm(embeddings.LayerNorm)
        self.layers = torch.nn.ModuleList(_Layer(layer) for layer in model.encoder.layer)

    def forward(self, token_ids: List[int], lengths: List[int]) -> torch.Tensor:
        """Pooled (not normalized) vectors [sentences, hidden] of the sentences whose tokens
        are `token_ids`, one after the other, `lengths` long."""
        device = self.words.device
        ids = torch.tensor(token_ids, dtype=torch.long, device=device)
        length = torch.tensor(lengths, dtype=torch.long, device=device)
        starts = length.cumsum(0) - length
        sentence_of_token = torch.repeat_interleave(torch.arange(len(lengths), device=device), length)
        positions = torch.arange(len(token_ids), device=device) - starts[sentence_of_token]
        x = self.words[ids] + self.positions[positions] + self.token_type
        x = self.embedding_norm(x)

        sentences, longest, hidden = len(lengths), max(lengths), x.shape[-1]
        valid = torch.arange(longest, device=device).unsqueeze(0) < length.unsqueeze(1)  # [sentences, longest]
        padded_rows = valid.flatten().nonzero().squeeze(1)  # each token's row in the padded layout
        key_mask = valid[:, None, None, :]
        for layer in self.layers:
            qkv = F.linear(x, layer.qkv_weight, layer.qkv_bias)
            padded = qkv.new_zeros(sentences * longest, qkv.shape[-1])
            padded[padded_rows] = qkv
            q, k, v = padded.view(sentences, longest, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
            attended = attended.transpose(1, 2).reshape(sentences * longest, hidden)[padded_rows]
            x = layer.attention_norm(x + F.linear(attended, layer.out_weight, layer.out_bias))
            up = F.gelu(F.linear(x, layer.up_weight, layer.up_bias))
            x = layer.output_norm(x + F.linear(up, layer.down_weight, layer.down_bias))

        if self.cls_pooling:
            return x[starts].float()
        sums = x.float().new_zeros(sentences, hidden).index_add_(0, sentence_of_token, x.float())
        return sums / length.unsqueeze(1)


class BertEncoder:
    """Pooled sentence vectors from a transformers BertModel's weights (see the module's
    docstring); the same numbers as transformers' forward, without the pad tokens."""

    pads = False

    def __init__(self, model: torch.nn.Module, pooling: str) -> None:
        self._forward = script(_Forward(model, pooling))
        for _ in range(2):  # see torchscript.py
            self([[0, 1]])

    @torch.inference_mode()
    def __call__(self, batch: list[list[int]]) -> torch.Tensor:
        return self._forward([t for ids in batch for t in ids], [len(ids) for ids in batch])
