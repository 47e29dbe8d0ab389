"""Turns a model spec (`[ID=]PATH` or a packaged model id) into a served, warmed-up model."""
from __future__ import annotations

import hashlib
import json
import logging
import pathlib
import time
from typing import Any

import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from service.config import Price, WorkerSettings
from service.engine.cpu import native
from service.engine.block_pool import chain_root
from service.engine.embedder import Embedder
from service.engine.encoder import create_encoder
from service.engine.engine import GenerationEngine
from service.engine.cpu.quantized import Quantization
from service.engine.runner import create_runner
from service.models.dummy import dummy_version, random_model, tokenizer_dir
from service.models.hardware import dtype_name, kv_cache_bytes, resolve_device, resolve_dtype, resolve_quantization
from service.models.registry import EmbeddingModel, GenerationModel, KvCacheCard, ModelCard, ModelKind
from service.models.sources import ModelSource, parse_spec
from service.models.weights import converted_gguf_dir, gguf_weight_bits, weights_version
from service.structured.grammar import ConstraintCompiler

log = logging.getLogger(__name__)

# generation_config keys that act as sampling defaults when a request leaves them unset.
_SAMPLING_DEFAULT_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def _card(source: ModelSource, kind: ModelKind, version: str, settings: WorkerSettings, **fields: Any) -> ModelCard:
    """The card of a model loaded from `source`, with its --price and the `fields` of its kind.
    The deploy id is stable across restarts and replicas serving the same weights."""
    price = settings.prices.get(source.model_id, Price())
    return ModelCard(
        model_id=source.model_id,
        kind=kind,
        version=version,
        deploy_id=hashlib.sha256(f"{source.model_id}:{version}".encode()).hexdigest()[:16],
        created=int(time.time()),
        price_input_per_million=price.input_per_million,
        price_output_per_million=price.output_per_million,
        **fields,
    )


def load_generation_model(spec: str, settings: WorkerSettings) -> GenerationModel:
    source = parse_spec(spec)
    started = time.monotonic()
    dummy = settings.load_format == "dummy"
    if dummy:
        version = dummy_version(source.path)
        tokenizer_path = tokenizer_dir(source.path, settings.cache_dir)
    else:
        version = weights_version(source.path, settings.cache_dir)
        hf_dir = source.path
        if source.path.suffix == ".gguf":
            hf_dir = converted_gguf_dir(source.path, version, settings.cache_dir)
        tokenizer_path = hf_dir
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    gguf_bits = gguf_weight_bits(source.path) if source.path.suffix == ".gguf" else None
    # Before any layer is built, so that --cache-dir counts.
    native_kernels = device.type == "cpu" and native.load(settings.cache_dir / "kernels")
    quantization = resolve_quantization(settings.quantization, device, gguf_bits, native_kernels)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    # Quantization starts from the exact float32 values (a GGUF's grid), then computes in dtype.
    load_dtype = dtype if quantization is Quantization.NONE else torch.float32
    if dummy:
        model = random_model(source.path, load_dtype, device)
    else:
        # Straight onto the device (on CUDA never all in host memory), in the dtype computed in.
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=load_dtype, device_map=str(device)).eval()

    # Ids past the tokenizer's vocabulary (a padded embedding, a borrowed tokenizer) are never sampled.
    sampled_vocab = len(tokenizer)
    eos = {token for token in _as_list(model.generation_config.eos_token_id) if token < sampled_vocab}
    if tokenizer.eos_token_id is not None:
        eos.add(tokenizer.eos_token_id)
    configured = model.generation_config.to_diff_dict()
    context_length = int(getattr(model.config, "max_position_embeddings", 0) or tokenizer.model_max_length)
    vocab_size = int(getattr(model.config, "vocab_size", 0) or 0)
    runner = create_runner(
        model,
        kv_cache_bytes=kv_cache_bytes(settings.kv_cache_memory, device),
        max_length=context_length,
        dtype=dtype,
        quantization=quantization,
        max_batch=settings.max_running,
    )
    del model
    kernels = runner.kernels
    dtype_label = dtype_name(dtype) if quantization is Quantization.NONE else f"{dtype_name(dtype)}+{quantization.value}"
    engine = GenerationEngine(
        runner,
        tokenizer,
        frozenset(eos),
        sampled_vocab=sampled_vocab,
        max_running=settings.max_running,
        max_waiting=settings.max_waiting,
        prefix_caching=settings.prefix_caching,
        cache_root=chain_root(source.model_id, version, dtype_label, kernels),
    )
    kv_cache = KvCacheCard(
        block_size=runner.block_size,
        blocks=runner.blocks,
        prefix_caching=engine.prefix_caching,
        bytes_per_token=runner.token_bytes,
    )
    log.info(
        "KV cache of %s: %d blocks of %d tokens (%d tokens, %.2f GiB), prefix caching %s",
        source.model_id, kv_cache.blocks, kv_cache.block_size, kv_cache.tokens,
        kv_cache.tokens * kv_cache.bytes_per_token / 2**30, "on" if kv_cache.prefix_caching else "off",
    )
    card = _card(
        source,
        ModelKind.GENERATION,
        version,
        settings,
        context_length=context_length,
        device=str(device),
        dtype=dtype_label,
        has_chat_template=bool(tokenizer.chat_template),
        eos_token_ids=tuple(sorted(eos)),
        kernels=kernels,
        kv_cache=kv_cache,
    )
    log.info("loaded %s:%s on %s/%s (%s kernels) in %.1fs", card.model_id, version, device, card.dtype, kernels,
             time.monotonic() - started)
    return GenerationModel(
        card=card,
        tokenizer=tokenizer,
        engine=engine,
        sampling_defaults={k: configured[k] for k in _SAMPLING_DEFAULT_KEYS if k in configured},
        vocab_size=vocab_size,
        constraints=ConstraintCompiler(tokenizer, vocab_size, eos),
    )


def load_embedding_model(spec: str, settings: WorkerSettings) -> EmbeddingModel:
    """A sentence-transformers style directory: pooling and normalization from its module files."""
    source = parse_spec(spec)
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device, embedding=True)
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    model = AutoModel.from_pretrained(source.path, dtype=dtype).to(device).eval()
    pooling, normalize, max_length = _sentence_transformers_settings(source.path)
    context_length = max_length or min(tokenizer.model_max_length, model.config.max_position_embeddings)
    version = weights_version(source.path, settings.cache_dir)
    card = _card(
        source,
        ModelKind.EMBEDDING,
        version,
        settings,
        context_length=context_length,
        device=str(device),
        dtype=dtype_name(dtype),
        embedding_dimension=model.config.hidden_size,
    )
    encoder = create_encoder(model, pooling=pooling, pad_token_id=tokenizer.pad_token_id or 0)
    embedder = Embedder(encoder, device, normalize=normalize)
    return EmbeddingModel(card=card, tokenizer=tokenizer, embedder=embedder)


def _sentence_transformers_settings(path: pathlib.Path) -> tuple[str, bool, int | None]:
    """(pooling, normalize, max sequence length) from modules.json and friends; mean pooling,
    normalized, when the directory is a plain HF encoder."""
    pooling, normalize, max_length = "mean", True, None
    modules_file = path / "modules.json"
    if modules_file.exists():
        modules = json.loads(modules_file.read_text())
        normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
        for module in modules:
            if module.get("type", "").endswith("Pooling"):
                config = json.loads((path / module["path"] / "config.json").read_text())
                pooling = "cls" if config.get("pooling_mode_cls_token") else "mean"
    bert_config = path / "sentence_bert_config.json"
    if bert_config.exists():
        max_length = json.loads(bert_config.read_text()).get("max_seq_length")
    return pooling, normalize, max_length


def _as_list(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)
