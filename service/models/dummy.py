"""`--load-format dummy`: a generation model of a real shape with random weights, from its
`config.json` alone (as vLLM's load format of the same name). Speed depends on shapes, not on the
values, and these machines have no model hub to fetch an 8B model's weights from.

The weights are drawn on the serving device itself, in the serving dtype, from a fixed seed: no
transient full-precision copy, and the same random model (and so the same tokens) on every start.
A config without a tokenizer borrows the default packaged model's; the engine never samples the ids
past that tokenizer's vocabulary.
"""
from __future__ import annotations

import hashlib
import pathlib

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, PreTrainedModel

from service.models.packaged import DEFAULT_GENERATION_MODEL
from service.models.weights import gguf_tokenizer_dir

_SEED = 0
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def dummy_version(config_dir: pathlib.Path) -> str:
    """The model's version: a hash of its config (the weights follow from it and the seed)."""
    digest = hashlib.sha256(b"dummy:%d:" % _SEED)
    digest.update((config_dir / "config.json").read_bytes())
    return digest.hexdigest()[:12]


def tokenizer_dir(config_dir: pathlib.Path, cache_dir: pathlib.Path) -> pathlib.Path:
    """Where the model's tokenizer is: beside its config, else the default packaged model's."""
    if any((config_dir / name).exists() for name in _TOKENIZER_FILES):
        return config_dir
    return gguf_tokenizer_dir(DEFAULT_GENERATION_MODEL.locate(), cache_dir)


def random_model(config_dir: pathlib.Path, dtype: torch.dtype, device: torch.device) -> PreTrainedModel:
    """The causal LM of `config_dir/config.json` with seeded random weights, built on `device`."""
    config = AutoConfig.from_pretrained(config_dir)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.device(device):
        torch.manual_seed(_SEED)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config = GenerationConfig.from_model_config(config)
    return model.eval()
