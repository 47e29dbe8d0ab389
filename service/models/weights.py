"""Weights on disk: content versions, and GGUF files converted once into a cached HF directory.

transformers reads GGUF but dequantizes it on every load (about 20 s for the default model) and
refuses `save_pretrained` on a GGUF-loaded model; so the dequantized weights are loaded into a
fresh model built from the same config and saved as safetensors, keyed by the file's hash.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import pathlib
import shutil
import tempfile
from collections import Counter

log = logging.getLogger(__name__)

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
_COMPLETE_MARKER = "tokenwire-converted.json"


def _file_digest(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_version(path: pathlib.Path, cache_dir: pathlib.Path) -> str:
    """A short hash of the weight files' contents (the `VERSION` in `org/name:VERSION`).

    Digests are memoized per (path, size, mtime) so that large models are hashed once.
    """
    files = [path] if path.is_file() else _weight_files(path)
    memo_path = cache_dir / "digests.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    combined = hashlib.sha256()
    for file in files:
        stat = file.stat()
        key = f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        if key not in memo:
            memo[key] = _file_digest(file)
        combined.update(memo[key].encode())
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = memo_path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(memo))
    tmp.replace(memo_path)
    return combined.hexdigest()[:12]


def _weight_files(directory: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in directory.rglob("*") if p.suffix in _WEIGHT_SUFFIXES)


def has_weights(path: pathlib.Path) -> bool:
    """Whether `path` is a weight file or a directory holding one (not, say, a config alone)."""
    return path.is_file() or bool(_weight_files(path))


def converted_gguf_dir(gguf_path: pathlib.Path, version: str, cache_dir: pathlib.Path) -> pathlib.Path:
    """The HF directory holding `gguf_path`'s weights, converting them on the first call."""
    target = cache_dir / "converted" / f"{gguf_path.stem}-{version}"
    if (target / _COMPLETE_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to safetensors in %s (once)", gguf_path.name, target)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        staging = pathlib.Path(tmp) / "model"
        _convert(gguf_path, staging)
        (staging / _COMPLETE_MARKER).write_text(json.dumps({"source": str(gguf_path), "version": version}))
        try:
            staging.rename(target)
        except OSError:  # another worker finished the same conversion first
            if not (target / _COMPLETE_MARKER).exists():
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
    return target


def gguf_tokenizer_dir(gguf_path: pathlib.Path, cache_dir: pathlib.Path) -> pathlib.Path:
    """A directory holding `gguf_path`'s tokenizer alone, saved on the first call (transformers
    takes about 15 s to read it from the GGUF, well under a second from there)."""
    target = cache_dir / "tokenizers" / f"{gguf_path.stem}-{weights_version(gguf_path, cache_dir)}"
    if target.exists():
        return target
    from transformers import AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name).save_pretrained(staging)
    try:
        staging.rename(target)
    except OSError:  # another process saved it first
        shutil.rmtree(staging)
    return target


def _convert(gguf_path: pathlib.Path, out_dir: pathlib.Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    source = dict(pretrained_model_name_or_path=str(gguf_path.parent), gguf_file=gguf_path.name)
    tokenizer = AutoTokenizer.from_pretrained(**source)
    loaded = AutoModelForCausalLM.from_pretrained(
        **source, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def gguf_weight_bits(path: pathlib.Path) -> int | None:
    """Bits per weight of a GGUF's transformer-block matrices (their most common type): 4 for
    Q4_0 and the like, 8 for Q5-Q8 types, None for unquantized files."""
    from gguf import GGUFReader  # a dependency of transformers' GGUF loading

    kinds = Counter(
        tensor.tensor_type.name for tensor in GGUFReader(str(path)).tensors
        if tensor.name.startswith("blk.") and len(tensor.shape) == 2
    )
    if not kinds:
        return None
    kind = kinds.most_common(1)[0][0]
    if kind.startswith(("Q2", "Q3", "Q4", "IQ1", "IQ2", "IQ3", "IQ4")):
        return 4
    if kind.startswith(("Q5", "Q6", "Q8")):
        return 8
    return None
