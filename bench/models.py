"""The model files every server in the comparison loads: one GGUF file and the same weights as an
HF directory (the one tokenwire converts and caches), plus the embedding model's directory."""
from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass

from service.models.packaged import DEFAULT_EMBEDDING_MODEL, DEFAULT_GENERATION_MODEL
from service.models.weights import converted_gguf_dir, weights_version

GENERATION_MODEL_ID = DEFAULT_GENERATION_MODEL.model_id
EMBEDDING_MODEL_ID = DEFAULT_EMBEDDING_MODEL.model_id


def default_cache_dir() -> pathlib.Path:
    """tokenwire's default --cache-dir (TOKENWIRE_CACHE_DIR, else ~/.cache/tokenwire)."""
    return pathlib.Path(os.environ.get("TOKENWIRE_CACHE_DIR", pathlib.Path.home() / ".cache" / "tokenwire"))


@dataclass(frozen=True)
class ModelFiles:
    gguf: pathlib.Path
    # The GGUF file's weights as a Hugging Face directory (safetensors, config, tokenizer).
    hf_dir: pathlib.Path
    embedding_dir: pathlib.Path

    @classmethod
    def locate(cls, cache_dir: pathlib.Path) -> ModelFiles:
        """Finds the packaged models; converts the GGUF file into `cache_dir` unless already there."""
        gguf = DEFAULT_GENERATION_MODEL.locate()
        hf_dir = converted_gguf_dir(gguf, weights_version(gguf, cache_dir), cache_dir)
        return cls(gguf, hf_dir, DEFAULT_EMBEDDING_MODEL.locate())
