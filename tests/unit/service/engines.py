"""Engines of their own on the default model's weights, and requests for them, for the engine tests."""
from __future__ import annotations

import torch

from service.engine.engine import GenerationEngine
from service.engine.cpu.quantized import Quantization
from service.engine.runner import create_runner
from service.engine.types import Finish, GenerationRequest, SamplingParams, StoppingParams

GREEDY = SamplingParams(temperature=0.0)


def request(tokenizer, text: str, max_new_tokens: int = 16, **kwargs) -> GenerationRequest:
    messages = [{"role": "user", "content": text}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    stopping = kwargs.pop("stopping", StoppingParams(max_new_tokens=max_new_tokens))
    return GenerationRequest(
        request_id="t", prompt_ids=tuple(ids), sampling=kwargs.pop("sampling", GREEDY), stopping=stopping, **kwargs
    )


async def collect(
    engine: GenerationEngine, request: GenerationRequest
) -> tuple[dict[int, str], dict[int, list[int]], dict[int, Finish]]:
    """Each sequence's streamed text, token ids and finish."""
    texts: dict[int, str] = {}
    ids: dict[int, list[int]] = {}
    finishes: dict[int, Finish] = {}
    async for update in engine.submit(request):
        texts[update.index] = texts.get(update.index, "") + update.text
        ids.setdefault(update.index, []).extend(update.token_ids)
        if update.finish:
            finishes[update.index] = update.finish
    return texts, ids, finishes


def engine(
    model,
    tokenizer,
    *,
    slots: int = 8,
    max_waiting: int = 64,
    prefill_chunk: int = 256,
    dtype: torch.dtype | None = None,
    quantization: Quantization = Quantization.NONE,
    kv_cache_bytes: int = 256 * 2**20,
    prefix_caching: bool = True,
) -> GenerationEngine:
    """An engine of its own on `model`'s weights (float32 unless `dtype` says otherwise, so that
    its tokens compare with transformers'), running at most `slots` sequences."""
    engine = GenerationEngine(
        create_runner(
            model,
            kv_cache_bytes=kv_cache_bytes,
            max_length=model.config.max_position_embeddings,
            dtype=dtype,
            quantization=quantization,
        ),
        tokenizer,
        frozenset({model.config.eos_token_id}),
        max_running=slots,
        max_waiting=max_waiting,
        prefill_chunk=prefill_chunk,
        prefix_caching=prefix_caching,
    )
    engine.start()
    return engine


def served(card_dtype: str) -> dict[str, object]:
    """The dtype and quantization a worker serves with, from its model card's dtype
    ("bfloat16+int4", "float32", ...), as engine() takes them."""
    name, _, quantization = card_dtype.partition("+")
    return {"dtype": getattr(torch, name), "quantization": Quantization(quantization or "none")}
