"""The engine over its paged KV cache, on the real default model in the worker's own dtype and
quantization: prefix caching that changes no output, preemption that completes every request
with its own tokens, n > 1 sequences sharing their prompt, and the limits of the cache."""
from __future__ import annotations

import asyncio

import pytest

from service.engine.types import SamplingParams, StoppingParams
from service.errors import KvCacheExceeded
from tests.unit.service.engines import collect, engine, request, served

DOCUMENT = (
    "Lighthouses are towers that guide ships with light. The first known lighthouse stood at "
    "Alexandria, on the island of Pharos, and was counted among the wonders of the ancient world. "
    "Modern lighthouses use Fresnel lenses, which bend light from a small lamp into a strong "
    "beam that can be seen many miles away. Each lighthouse has its own pattern of flashes, so "
    "sailors can tell them apart at night. Many are now automated, and their keepers are gone."
)
SEEDED = SamplingParams(temperature=1.0, top_p=0.95)


@pytest.fixture(scope="module")
def settings(generation_model) -> dict[str, object]:
    return served(generation_model.card.dtype)


@pytest.fixture(scope="module")
def cold(hf_model, tokenizer, settings):
    """Prefix caching off: every prompt computed in full, the reference for a hit."""
    reference = engine(hf_model, tokenizer, prefix_caching=False, **settings)
    yield reference
    reference.stop()


@pytest.fixture
def cached(hf_model, tokenizer, settings):
    """Prefix caching on, an empty cache."""
    fresh = engine(hf_model, tokenizer, **settings)
    yield fresh
    fresh.stop()


def _question(tokenizer, question: str, **kwargs):
    return request(tokenizer, f"{DOCUMENT}\n\n{question}", **kwargs)


async def _run(engine_, request_):
    """(cached tokens, token ids of each sequence, text of each sequence)."""
    stream = engine_.submit(request_)
    admission = await stream.admitted()
    texts, ids = {}, {}
    async for update in stream:
        texts[update.index] = texts.get(update.index, "") + update.text
        ids.setdefault(update.index, []).extend(update.token_ids)
    return admission.cached_tokens, ids, texts


@pytest.mark.parametrize("sampling,seed", [(SamplingParams(temperature=0.0), 0), (SEEDED, 11)], ids=["greedy", "seeded"])
async def test_a_cache_hit_changes_no_token(cached, cold, tokenizer, sampling, seed):
    first = _question(tokenizer, "Who built the first lighthouse?", max_new_tokens=24, sampling=sampling, seed=seed)
    second = _question(tokenizer, "How do sailors tell them apart?", max_new_tokens=24, sampling=sampling, seed=seed)
    assert len(first.prompt_ids) > 3 * 32
    expected = [(await _run(cold, r))[1] for r in (first, second)]

    miss = await _run(cached, first)
    assert miss[0] == 0 and miss[1] == expected[0]
    # The same prompt again, and another question on the same document beside other requests.
    crowd = [request(tokenizer, f"Write about {topic}.", max_new_tokens=20) for topic in ("cats", "rain")]
    again, other, *_ = await asyncio.gather(*(_run(cached, r) for r in (first, second, *crowd)))
    block = cached.kv_cache.block_size
    assert again[0] == (len(first.prompt_ids) - 1) // block * block and again[1] == expected[0]
    assert other[0] >= len(tokenizer(DOCUMENT)["input_ids"]) // block * block - block and other[1] == expected[1]
    assert cached.stats.prefix_hit_tokens == again[0] + other[0]


async def test_the_next_turn_of_a_conversation_hits_the_blocks_of_the_answer(cached, cold, tokenizer):
    turn = _question(tokenizer, "Summarise this in two sentences.", max_new_tokens=40)
    _, ids, _ = await _run(cached, turn)
    follow_up = tuple(tokenizer("\nThank you. Which wonder was it?")["input_ids"])
    next_turn = type(turn)(**{**turn.__dict__, "prompt_ids": turn.prompt_ids + tuple(ids[0]) + follow_up})
    cached_tokens, next_ids, _ = await _run(cached, next_turn)
    block = cached.kv_cache.block_size
    # Every full block of the first turn, generated tokens included (the last one sampled was
    # never computed: it had no successor).
    assert cached_tokens == (len(turn.prompt_ids) + len(ids[0]) - 1) // block * block
    assert cached_tokens > len(turn.prompt_ids)
    assert next_ids == (await _run(cold, next_turn))[1]


async def test_a_pool_too_small_for_the_running_set_still_gives_each_request_its_own_tokens(
    hf_model, cold, tokenizer, settings
):
    block_bytes = cold._runner.token_bytes * cold.kv_cache.block_size
    small = engine(hf_model, tokenizer, kv_cache_bytes=10 * block_bytes, **settings)
    stopping = StoppingParams(max_new_tokens=100, ignore_eos=True)
    requests = [
        request(tokenizer, prompt, stopping=stopping, sampling=sampling, seed=seed)
        for prompt, sampling, seed in (
            ("Write a story about a dragon.", SamplingParams(temperature=0.0), 0),
            ("Describe a busy market.", SEEDED, 5),
            ("Explain how bread is made.", SamplingParams(temperature=0.0), 0),
            ("Tell me about the moon.", SEEDED, 9),
        )
    ]
    try:
        # Each needs 5 blocks alone (~140 tokens); together 20, in a pool of 10.
        assert all(small._pool.blocks_for(len(r.prompt_ids) + 100) <= 5 for r in requests)
        together = await asyncio.gather(*(_run(small, r) for r in requests))
        assert small.stats.preemptions > 0
    finally:
        small.stop()
    alone = [await _run(cold, r) for r in requests]
    assert [ids for _, ids, _ in together] == [ids for _, ids, _ in alone]
    assert [texts for _, _, texts in together] == [texts for _, _, texts in alone]  # nothing streamed twice


async def test_n_sequences_compute_their_prompt_once_and_share_its_blocks(cached, tokenizer):
    await _run(cached, _question(tokenizer, "Name one wonder of the ancient world.", max_new_tokens=8))
    many = _question(tokenizer, "Name another wonder of the ancient world.", max_new_tokens=8, n=3)
    tokens_before = cached.stats.tokens
    cached_tokens, ids, _ = await _run(cached, many)
    # The shared document came from the cache; the rest of the prompt was computed once, then
    # 7 decode tokens per sequence.
    assert cached_tokens > 0
    assert cached.stats.tokens - tokens_before == len(many.prompt_ids) - cached_tokens + 3 * 7
    again = _question(tokenizer, "Name another wonder of the ancient world.", max_new_tokens=8)
    _, expected, _ = await _run(cached, again)
    assert ids == {0: expected[0], 1: expected[0], 2: expected[0]}


async def test_identical_prompts_arriving_together_compute_their_blocks_once(cached, tokenizer):
    requests = [_question(tokenizer, f"Question number {i}: what is a Fresnel lens?", max_new_tokens=4) for i in range(3)]
    results = await asyncio.gather(*(_run(cached, r) for r in requests))
    block = cached.kv_cache.block_size
    shared = len(tokenizer(DOCUMENT)["input_ids"]) // block * block - block
    assert results[0][0] == 0 and all(cached_tokens >= shared for cached_tokens, _, _ in results[1:])


async def test_cancel_releases_every_block(cached, tokenizer):
    stream = cached.submit(_question(tokenizer, "Write a long essay.", stopping=StoppingParams(2000, ignore_eos=True)))
    await stream.__anext__()
    assert cached.kv_cache.used_blocks > 0 or cached.running_count > 0
    stream.cancel()
    await _until(lambda: cached.running_count == 0 and cached.kv_cache.used_blocks == 0)


async def test_a_more_urgent_request_preempts_a_less_urgent_one(hf_model, cold, tokenizer, settings):
    single = engine(hf_model, tokenizer, slots=1, **settings)
    bulk = request(tokenizer, "Write a story about a dragon.", stopping=StoppingParams(60, ignore_eos=True), priority=5)
    urgent = request(tokenizer, "Say hi.", max_new_tokens=5, priority=0)
    try:
        bulk_stream = single.submit(bulk)
        first = await bulk_stream.__anext__()  # running: the only sequence the engine runs at once
        rest = asyncio.create_task(_drain(bulk_stream))
        await _run(single, urgent)
        assert not rest.done()  # the urgent request finished while the bulk one waited
        bulk_ids = list(first.token_ids) + await rest
        assert single.stats.preemptions == 1
    finally:
        single.stop()
    assert bulk_ids == (await _run(cold, bulk))[1][0]


async def test_a_request_that_could_never_fit_is_refused_at_once(hf_model, cold, tokenizer, settings):
    block_bytes = cold._runner.token_bytes * cold.kv_cache.block_size
    small = engine(hf_model, tokenizer, kv_cache_bytes=4 * block_bytes, **settings)
    try:
        assert small.max_sequence_tokens == 4 * small.kv_cache.block_size
        with pytest.raises(KvCacheExceeded, match=f"holds {small.max_sequence_tokens} tokens"):
            small.submit(request(tokenizer, "Hello", max_new_tokens=small.max_sequence_tokens))
    finally:
        small.stop()


async def _drain(stream) -> list[int]:
    return [token for update in [u async for u in stream] for token in update.token_ids]


async def _until(condition, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
