"""The engine's CUDA path. Skipped without a GPU; run with `pytest -m gpu` on a GPU machine."""
from __future__ import annotations

import asyncio

import pytest
import torch

from service.engine.engine import GenerationEngine
from service.engine.runner import create_runner
from service.engine.types import GenerationRequest, SamplingParams, StoppingParams

from .test_llama_runner import KV_CACHE_BYTES, VARIANTS, _greedy, _random_model, _reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lean_runner_on_cuda_matches_transformers_greedy(variant):
    model = _random_model(VARIANTS[variant]).to("cuda")
    runner = create_runner(model, kv_cache_bytes=KV_CACHE_BYTES, max_length=256)
    prompt = list(range(3, 22))
    assert _greedy(runner, prompt, 16, chunk=8) == _reference(model, prompt, 16)


async def test_engine_on_cuda_serves_concurrent_requests_in_bf16():
    model = _random_model(VARIANTS["gqa"]).to("cuda", torch.bfloat16)
    engine = GenerationEngine(
        create_runner(model, kv_cache_bytes=KV_CACHE_BYTES, max_length=256), _ByteDecoder(), frozenset({0}), max_running=8
    )
    engine.start()
    try:
        requests = [
            GenerationRequest(str(i), tuple(range(3, 10 + i)), SamplingParams(temperature=0.0),
                              StoppingParams(max_new_tokens=8 + i, ignore_eos=True))
            for i in range(6)
        ]

        async def tokens(request):
            return [t async for update in engine.submit(request) for t in update.token_ids]

        outputs = await asyncio.gather(*(tokens(r) for r in requests))
    finally:
        engine.stop()
    assert [len(o) for o in outputs] == [8 + i for i in range(6)]


class _ByteDecoder:
    """Enough of a tokenizer for the engine's detokenizer on random-weight models."""

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(chr(97 + i % 26) for i in ids)
