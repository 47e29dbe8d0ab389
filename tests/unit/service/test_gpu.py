"""The engine on the CUDA backend, on tiny random models and a byte-level tokenizer trained here
(no model files: the device machine has none). Skipped without a GPU; run with `pytest -m gpu`.
The runner's own tests (greedy tokens against transformers) are in test_cuda_runner.py."""
from __future__ import annotations

import asyncio
import json

import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import PreTrainedTokenizerFast

from service.engine.engine import GenerationEngine
from service.engine.runner import create_runner
from service.engine.types import GenerationRequest, SamplingParams, StoppingParams
from service.models.dummy import random_model
from service.models.reference import REFERENCE_MODELS
from service.structured.grammar import ConstraintCompiler

from .test_llama_runner import VARIANTS, _random_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
GREEDY = SamplingParams(temperature=0.0)
SEEDED = SamplingParams(temperature=1.0, top_p=0.95)
KV_CACHE_BYTES = 16 * 2**20


@pytest.fixture(scope="module")
def byte_tokenizer() -> PreTrainedTokenizerFast:
    trainer = ByteLevelBPETokenizer()
    corpus = ['{"name": "Ada", "age": 36}', "The quick brown fox jumps over the lazy dog."] * 50
    trainer.train_from_iterator(corpus, vocab_size=300, special_tokens=["<eos>"])
    return PreTrainedTokenizerFast(tokenizer_object=trainer._tokenizer, eos_token="<eos>")


def _engine(tokenizer, dtype=torch.float32, kv_cache_bytes=KV_CACHE_BYTES, **kwargs) -> GenerationEngine:
    config = VARIANTS["gqa"].__class__(**{**VARIANTS["gqa"].to_dict(), "vocab_size": len(tokenizer)})
    model = _random_model(config).to("cuda", dtype)
    runner = create_runner(model, kv_cache_bytes=kv_cache_bytes, max_length=256, max_batch=8)
    engine = GenerationEngine(runner, tokenizer, frozenset({tokenizer.eos_token_id}), **kwargs)
    engine.start()
    return engine


def _request(tokenizer, text: str, tokens: int, sampling=GREEDY, seed: int = 0, **kwargs) -> GenerationRequest:
    return GenerationRequest(text, tuple(tokenizer.encode(text)), sampling,
                             StoppingParams(max_new_tokens=tokens, ignore_eos=True), seed=seed, **kwargs)


async def _tokens(engine: GenerationEngine, request: GenerationRequest) -> list[int]:
    return [token async for update in engine.submit(request) for token in update.token_ids]


async def test_concurrent_requests_in_bf16_each_get_their_tokens(byte_tokenizer):
    engine = _engine(byte_tokenizer, torch.bfloat16, max_running=8)
    try:
        requests = [_request(byte_tokenizer, f"The fox {i}", 8 + i) for i in range(6)]
        outputs = await asyncio.gather(*(_tokens(engine, r) for r in requests))
        again = await asyncio.gather(*(_tokens(engine, r) for r in requests))  # the same batch again
    finally:
        engine.stop()
    assert [len(o) for o in outputs] == [8 + i for i in range(6)]
    assert outputs == again


async def test_a_seeded_request_reproduces_its_tokens(byte_tokenizer):
    engine = _engine(byte_tokenizer, torch.bfloat16)
    try:
        first = await _tokens(engine, _request(byte_tokenizer, "The lazy dog", 24, SEEDED, seed=7))
        second = await _tokens(engine, _request(byte_tokenizer, "The lazy dog", 24, SEEDED, seed=7))
        other = await _tokens(engine, _request(byte_tokenizer, "The lazy dog", 24, SEEDED, seed=8))
    finally:
        engine.stop()
    assert first == second and first != other


async def test_cancel_releases_every_block(byte_tokenizer):
    engine = _engine(byte_tokenizer)
    try:
        stream = engine.submit(_request(byte_tokenizer, "The quick brown fox", 200))
        await stream.__anext__()
        stream.cancel()
        async with asyncio.timeout(30):
            while engine.running_count or engine.kv_cache.used_blocks:
                await asyncio.sleep(0.01)
    finally:
        engine.stop()


async def test_a_pool_too_small_for_the_running_set_completes_every_request(byte_tokenizer):
    roomy = _engine(byte_tokenizer)
    block_bytes = roomy._runner.token_bytes * roomy.kv_cache.block_size
    prompts = ["The quick brown fox", "The lazy dog", "jumps over the", "Ada is 36"]
    requests = [_request(byte_tokenizer, p, 100) for p in prompts]
    try:
        alone = [await _tokens(roomy, r) for r in requests]
    finally:
        roomy.stop()
    small = _engine(byte_tokenizer, kv_cache_bytes=10 * block_bytes)
    try:
        together = await asyncio.gather(*(_tokens(small, r) for r in requests))
        assert small.stats.preemptions > 0
    finally:
        small.stop()
    # float32: a recomputed prefix differs from its decode steps by rounding only, far below
    # the gaps between a random model's top logits.
    assert together == alone


async def test_structured_output_parses(byte_tokenizer):
    engine = _engine(byte_tokenizer)
    # Bounded: a random model fills every string and number to its limit.
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}, "adult": {"type": "boolean"}},
              "required": ["name", "adult"], "additionalProperties": False}
    constraint = ConstraintCompiler(byte_tokenizer, len(byte_tokenizer), [byte_tokenizer.eos_token_id]).json_schema(schema)
    request = GenerationRequest("s", tuple(byte_tokenizer.encode("Ada")), GREEDY,
                                StoppingParams(max_new_tokens=60), constraint=constraint)
    try:
        text = "".join([update.text async for update in engine.submit(request)])
    finally:
        engine.stop()
    value = json.loads(text)
    assert set(value) == {"name", "adult"} and isinstance(value["adult"], bool)


async def test_the_dummy_8b_shape_loads_and_generates(byte_tokenizer):
    model = random_model(REFERENCE_MODELS["meta-llama/Llama-3.1-8B-Instruct"], torch.bfloat16, torch.device("cuda"))
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 2) == 8.03
    runner = create_runner(model, kv_cache_bytes=2 * 2**30, max_length=8192, max_batch=4)
    del model
    engine = GenerationEngine(runner, byte_tokenizer, frozenset(), sampled_vocab=len(byte_tokenizer))
    engine.start()
    try:
        tokens = await _tokens(engine, _request(byte_tokenizer, "The quick brown fox", 16))
    finally:
        engine.stop()
    assert len(tokens) == 16 and max(tokens) < len(byte_tokenizer)
