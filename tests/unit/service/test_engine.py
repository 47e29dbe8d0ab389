"""The engine alone, on the real default model: no gRPC, no server."""
from __future__ import annotations

import asyncio

import pytest
import torch

from service.engine.cpu.quantized import Quantization
from service.engine.types import FinishReason, SamplingParams, StoppingParams
from service.errors import InvalidRequest, QueueFull
from tests.unit.service.engines import collect as _collect
from tests.unit.service.engines import engine as _engine
from tests.unit.service.engines import request as _request


async def test_max_new_tokens_finishes_with_length(generation_model, tokenizer):
    request = _request(tokenizer, "Write a long poem about the sea.", max_new_tokens=5)
    _, ids, finishes = await _collect(generation_model.engine, request)
    assert len(ids[0]) == 5 and finishes[0].reason is FinishReason.LENGTH


async def test_stop_string_spanning_tokens_is_cut_and_never_emitted(generation_model, tokenizer):
    base = _request(tokenizer, "Count from 1 to 10, separated by commas.", max_new_tokens=40)
    full, _, _ = await _collect(generation_model.engine, base)
    # A stop string that straddles a token boundary of the greedy output.
    text = full[0]
    cut = text.index("4")
    stop = text[cut - 2 : cut + 2]
    request = _request(
        tokenizer, "Count from 1 to 10, separated by commas.",
        stopping=StoppingParams(max_new_tokens=40, stop_strings=(stop,)),
    )
    updates = [u async for u in generation_model.engine.submit(request)]
    streamed = "".join(u.text for u in updates)
    assert streamed == text[: cut - 2]
    assert updates[-1].finish.reason is FinishReason.STOP and updates[-1].finish.stop_string == stop
    assert all(stop not in u.text for u in updates)


async def test_same_seed_reproduces_and_n_sequences_differ(generation_model, tokenizer):
    sampling = SamplingParams(temperature=1.0)
    request = _request(tokenizer, "Tell me a one-line joke.", max_new_tokens=12, sampling=sampling, n=3, seed=1234)
    first, _, _ = await _collect(generation_model.engine, request)
    second, _, _ = await _collect(generation_model.engine, request)
    assert first == second and sorted(first) == [0, 1, 2]
    assert len(set(first.values())) > 1


async def test_nearby_seeds_share_no_sequence_and_n1_draws_the_first(generation_model, tokenizer):
    sampling = SamplingParams(temperature=1.0)

    async def texts(seed: int, n: int) -> list[str]:
        request = _request(tokenizer, "My favourite animal is", max_new_tokens=10, sampling=sampling, n=n, seed=seed)
        collected, _, _ = await _collect(generation_model.engine, request)
        return [collected[i] for i in range(n)]

    seed_100, seed_101 = await texts(100, 4), await texts(101, 4)
    assert not set(seed_100) & set(seed_101)
    assert await texts(101, 1) == seed_101[:1]


@pytest.fixture(scope="module")
def fp32_engine(hf_model, tokenizer):
    engine = _engine(hf_model, tokenizer)
    yield engine
    engine.stop()


@pytest.fixture
def small_engine(hf_model, tokenizer):
    """Room for one sequence and one waiting request."""
    engine = _engine(hf_model, tokenizer, slots=1, max_waiting=1)
    yield engine
    engine.stop()


async def test_greedy_tokens_match_transformers_generate(fp32_engine, hf_model, tokenizer):
    request = _request(tokenizer, "Write a short story about a robot.", max_new_tokens=24)
    _, ids, _ = await _collect(fp32_engine, request)
    with torch.inference_mode():
        expected = hf_model.generate(
            torch.tensor([request.prompt_ids]), max_new_tokens=24, do_sample=False
        )[0, len(request.prompt_ids) :].tolist()
    assert ids[0] == expected[: len(ids[0])] and len(ids[0]) >= 10


async def test_sequences_joining_and_leaving_mid_batch_match_their_solo_tokens(fp32_engine, tokenizer):
    requests = [
        _request(tokenizer, "List five facts about the planet Mars.", max_new_tokens=32),
        _request(tokenizer, "Say hi.", max_new_tokens=4),
        _request(tokenizer, "Explain how a refrigerator works to a ten year old, in detail.", max_new_tokens=12),
    ]
    solo = [(await _collect(fp32_engine, r))[1] for r in requests]

    first = fp32_engine.submit(requests[0])
    head = await first.__anext__()  # running: the others join a batch in progress
    others = asyncio.gather(*(_collect(fp32_engine, r) for r in requests[1:]))
    rest = [u async for u in first]
    joined = list(head.token_ids) + [t for u in rest for t in u.token_ids]
    assert joined == solo[0][0]
    assert [ids for _, ids, _ in await others] == solo[1:]


async def test_a_prompt_split_into_chunks_gives_the_same_tokens(hf_model, fp32_engine, tokenizer):
    request = _request(tokenizer, "Describe the water cycle in a few sentences, then summarise it.", max_new_tokens=12)
    _, whole, _ = await _collect(fp32_engine, request)
    chunked = _engine(hf_model, tokenizer, prefill_chunk=32)
    try:
        running = chunked.submit(_request(tokenizer, "Count to twenty.", max_new_tokens=40))
        _, pieces, _ = await _collect(chunked, request)
        running.cancel()
    finally:
        chunked.stop()
    assert len(request.prompt_ids) > 3 * 7 and pieces == whole


async def test_n_greedy_sequences_share_one_prefill_and_agree(fp32_engine, tokenizer):
    _, single, _ = await _collect(fp32_engine, _request(tokenizer, "Name a fruit.", max_new_tokens=8))
    _, many, finishes = await _collect(fp32_engine, _request(tokenizer, "Name a fruit.", max_new_tokens=8, n=3))
    assert many == {0: single[0], 1: single[0], 2: single[0]} and sorted(finishes) == [0, 1, 2]


async def test_a_seed_reproduces_its_text_whatever_else_is_in_the_batch(fp32_engine, tokenizer):
    sampling = SamplingParams(temperature=1.0, top_p=0.9)
    request = _request(tokenizer, "Tell me a one-line joke.", max_new_tokens=16, sampling=sampling, seed=77)
    alone, _, _ = await _collect(fp32_engine, request)
    crowd = [
        _request(tokenizer, f"Write about {topic}.", max_new_tokens=count, sampling=sampling, seed=count)
        for topic, count in (("cats", 20), ("rain", 6), ("ships", 11))
    ]
    together = await asyncio.gather(*(_collect(fp32_engine, r) for r in [*crowd[:2], request, crowd[2]]))
    assert together[2][0] == alone


async def test_prompt_logprobs_are_the_same_whole_or_chunked(hf_model, fp32_engine, tokenizer):
    request = _request(
        tokenizer, "Why is the sky blue? Explain briefly.", max_new_tokens=3, prompt_logprobs=2, logprobs=1
    )
    whole = [u async for u in fp32_engine.submit(request)]
    chunked = _engine(hf_model, tokenizer, prefill_chunk=32)
    try:
        pieces = [u async for u in chunked.submit(request)]
    finally:
        chunked.stop()
    scored = whole[0].prompt_logprobs
    assert len(scored) == len(request.prompt_ids) and scored[0] is None
    assert [lp.token_id for lp in scored[1:]] == list(request.prompt_ids[1:])
    assert all(len(lp.top) == 2 and lp.top[0][1] >= lp.top[1][1] >= -1e9 for lp in scored[1:])
    assert all(lp.logprob <= lp.top[0][1] + 1e-5 for lp in scored[1:])
    got = pieces[0].prompt_logprobs
    assert [lp.token_id for lp in got[1:]] == [lp.token_id for lp in scored[1:]]
    assert [lp.logprob for lp in got[1:]] == pytest.approx([lp.logprob for lp in scored[1:]], abs=1e-4)
    generated = [lp for u in whole for lp in u.logprobs]
    assert [lp.token_id for lp in generated] == [t for u in whole for t in u.token_ids]
    assert all(lp.top[0][0] == lp.token_id and lp.top[0][1] == pytest.approx(lp.logprob) for lp in generated)


async def test_cancel_frees_the_slot_for_the_next_request(small_engine, tokenizer):
    long = small_engine.submit(_request(tokenizer, "Write a very long story.", max_new_tokens=2000))
    await long.__anext__()
    long.cancel()
    # With one slot, this request can only finish once the cancelled one has left.
    texts, _, finishes = await asyncio.wait_for(_collect(small_engine, _request(tokenizer, "Say hi.")), 30)
    assert 0 in finishes and texts[0]


async def test_waiting_requests_are_admitted_by_priority_then_arrival(hf_model, tokenizer):
    engine = _engine(hf_model, tokenizer, slots=1)
    try:
        running = engine.submit(_request(tokenizer, "Write a very long story.", max_new_tokens=2000))
        await running.__anext__()  # holds the only slot while the others queue
        order: list[str] = []

        async def run(name: str, priority: int) -> None:
            async for update in engine.submit(_request(tokenizer, "Say hi.", max_new_tokens=3, priority=priority)):
                if update.finish is not None:
                    order.append(name)

        queued = [asyncio.create_task(run(name, priority)) for name, priority in
                  (("late-normal", 0), ("bulk", 5), ("urgent", -1), ("later-normal", 0))]
        while engine.waiting_count < len(queued):
            await asyncio.sleep(0)  # until the engine holds all four in its queue
        running.cancel()
        await asyncio.wait_for(asyncio.gather(*queued), 60)
    finally:
        engine.stop()
    assert order == ["urgent", "late-normal", "later-normal", "bulk"]


async def test_full_queue_raises_queue_full(small_engine, tokenizer):
    running = small_engine.submit(_request(tokenizer, "Write a very long story.", max_new_tokens=2000))
    await running.__anext__()  # admitted: the queue is empty again
    waiting = small_engine.submit(_request(tokenizer, "hi"))
    with pytest.raises(QueueFull) as caught:
        small_engine.submit(_request(tokenizer, "hi"))
    assert caught.value.retry_after_s > 0
    running.cancel()
    waiting.cancel()


async def test_abort_all_finishes_running_and_waiting_requests_with_aborted(small_engine, tokenizer):
    stopping = StoppingParams(max_new_tokens=2000, ignore_eos=True)
    running = small_engine.submit(_request(tokenizer, "Write a very long story.", stopping=stopping))
    first = await running.__anext__()
    waiting = small_engine.submit(_request(tokenizer, "hi"))
    small_engine.abort_all()
    rest = [update async for update in running]
    queued = [update async for update in waiting]
    assert rest[-1].finish.reason is FinishReason.ABORTED and all(u.finish is None for u in [first, *rest[:-1]])
    assert 0 < len(first.token_ids) + sum(len(u.token_ids) for u in rest) < 2000
    assert [(u.index, u.token_ids, u.finish.reason) for u in queued] == [(0, (), FinishReason.ABORTED)]
    assert small_engine.waiting_count == 0
    # The engine goes on: the slot is free again.
    texts, _, finishes = await asyncio.wait_for(_collect(small_engine, _request(tokenizer, "Say hi.")), 30)
    assert finishes[0].reason is not FinishReason.ABORTED and texts[0]


async def test_time_limit_ends_the_sequence_with_time_limit(generation_model, tokenizer):
    stopping = StoppingParams(max_new_tokens=4000, ignore_eos=True, time_limit_s=0.3)
    _, ids, finishes = await _collect(
        generation_model.engine, _request(tokenizer, "Write a long story.", stopping=stopping)
    )
    assert finishes[0].reason is FinishReason.TIME_LIMIT and 0 < len(ids[0]) < 4000


async def test_min_new_tokens_holds_back_eos(generation_model, tokenizer):
    _, natural_ids, natural_finish = await _collect(
        generation_model.engine, _request(tokenizer, "Say hi.", max_new_tokens=60)
    )
    natural = len(natural_ids[0])
    assert natural_finish[0].reason is FinishReason.STOP and natural < 50  # ended by EOS
    stopping = StoppingParams(max_new_tokens=natural + 30, min_new_tokens=natural + 10)
    _, ids, _ = await _collect(generation_model.engine, _request(tokenizer, "Say hi.", stopping=stopping))
    assert len(ids[0]) >= natural + 10


async def test_min_new_tokens_holds_back_stop_strings(generation_model, tokenizer):
    prompt = "Count from 1 to 20, one number per line."
    full, _, _ = await _collect(generation_model.engine, _request(tokenizer, prompt, max_new_tokens=40))
    assert full[0].count("\n") >= 4
    early = StoppingParams(max_new_tokens=40, stop_strings=("\n",))
    texts, _, finishes = await _collect(generation_model.engine, _request(tokenizer, prompt, stopping=early))
    assert texts[0] == full[0][: full[0].index("\n")] and finishes[0].stop_string == "\n"
    held = StoppingParams(max_new_tokens=40, stop_strings=("\n",), min_new_tokens=10)
    texts, ids, finishes = await _collect(generation_model.engine, _request(tokenizer, prompt, stopping=held))
    # The first line break in or after the 10th token stops it; the earlier ones stay.
    assert len(ids[0]) >= 10 and finishes[0].stop_string == "\n"
    assert full[0].startswith(texts[0]) and texts[0].count("\n") >= 1


async def test_n_above_the_running_limit_is_refused(small_engine, tokenizer):
    with pytest.raises(InvalidRequest, match="at most 1"):
        small_engine.submit(_request(tokenizer, "hi", n=2))


async def _assert_batch_invariant(engine, tokenizer) -> None:
    prompts = [
        "Write a short story about a robot who learns to paint.",
        "Explain how a refrigerator works to a ten year old.",
        "List five facts about the planet Mars.",
        "Describe the water cycle in a few sentences.",
        "What are the benefits of regular exercise?",
        "Give me a recipe for a simple tomato soup.",
    ]
    solo = [(await _collect(engine, _request(tokenizer, p, max_new_tokens=64)))[1] for p in prompts]
    together = await asyncio.gather(*(_collect(engine, _request(tokenizer, p, max_new_tokens=64)) for p in prompts))
    assert [ids for _, ids, _ in together] == solo


async def test_greedy_text_does_not_depend_on_the_batch_in_the_served_dtype(generation_model, tokenizer):
    """The session engine runs the worker's own settings (bf16 with int4 decode weights on this
    CPU)."""
    await _assert_batch_invariant(generation_model.engine, tokenizer)


async def test_greedy_text_does_not_depend_on_the_batch_with_dense_bf16_weights(hf_model, tokenizer):
    """Unquantized bf16 (`--quantization none`): a lone decode row must round like a batched one."""
    engine = _engine(hf_model, tokenizer, dtype=torch.bfloat16)
    try:
        await _assert_batch_invariant(engine, tokenizer)
    finally:
        engine.stop()


async def test_greedy_text_does_not_depend_on_the_batch_with_int8_weights_and_activations(hf_model, tokenizer):
    """`--quantization int8`: activations are quantized per row, never per batch."""
    engine = _engine(hf_model, tokenizer, dtype=torch.bfloat16, quantization=Quantization.INT8)
    try:
        await _assert_batch_invariant(engine, tokenizer)
    finally:
        engine.stop()
