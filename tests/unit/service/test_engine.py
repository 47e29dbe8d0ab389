"""The engine alone, on the real default model: no gRPC, no server."""
from __future__ import annotations

import asyncio

import pytest
import torch

from service.engine.engine import GenerationEngine
from service.engine.types import FinishReason, GenerationRequest, SamplingParams, StoppingParams
from service.errors import QueueFull

GREEDY = SamplingParams(temperature=0.0)


def _request(tokenizer, text: str, max_new_tokens: int = 16, **kwargs) -> GenerationRequest:
    messages = [{"role": "user", "content": text}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    stopping = kwargs.pop("stopping", StoppingParams(max_new_tokens=max_new_tokens))
    return GenerationRequest(
        request_id="t", prompt_ids=tuple(ids), sampling=kwargs.pop("sampling", GREEDY), stopping=stopping, **kwargs
    )


async def _collect(engine, request):
    texts: dict[int, str] = {}
    ids: dict[int, list[int]] = {}
    finishes = {}
    async for update in engine.submit(request):
        texts[update.index] = texts.get(update.index, "") + update.text
        ids.setdefault(update.index, []).extend(update.token_ids)
        if update.finish:
            finishes[update.index] = update.finish
    return texts, ids, finishes


async def test_greedy_tokens_match_transformers_generate(generation_model, tokenizer):
    request = _request(tokenizer, "Name three colors.", max_new_tokens=12)
    _, ids, finishes = await _collect(generation_model.engine, request)
    model = generation_model.engine._runner.model
    with torch.inference_mode():
        expected = model.generate(
            torch.tensor([request.prompt_ids]), max_new_tokens=12, do_sample=False
        )[0, len(request.prompt_ids) :].tolist()
    assert ids[0] == expected[: len(ids[0])]
    assert finishes[0].reason in (FinishReason.LENGTH, FinishReason.STOP)


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


async def test_concurrent_requests_match_their_solo_output(generation_model, tokenizer):
    prompts = ["Say hello.", "What is 2+2?", "Name a fruit."]
    solo = [(await _collect(generation_model.engine, _request(tokenizer, p)))[0] for p in prompts]
    together = await asyncio.gather(*(_collect(generation_model.engine, _request(tokenizer, p)) for p in prompts))
    assert [t[0] for t in together] == solo


@pytest.fixture
def small_engine(generation_model):
    """A second engine on the same weights with room for one sequence and no queue."""
    engine = GenerationEngine(
        generation_model.engine._runner,
        generation_model.tokenizer,
        frozenset(generation_model.card.eos_token_ids),
        max_running=1,
        max_waiting=1,
    )
    engine.start()
    yield engine
    engine.stop()


async def test_cancel_frees_the_slot_for_the_next_request(small_engine, tokenizer):
    long = small_engine.submit(_request(tokenizer, "Write a very long story.", max_new_tokens=2000))
    await long.__anext__()
    long.cancel()
    # With one slot, this request can only finish once the cancelled one has left.
    texts, _, finishes = await asyncio.wait_for(_collect(small_engine, _request(tokenizer, "Say hi.")), 30)
    assert 0 in finishes and texts[0]


async def test_full_queue_raises_queue_full(small_engine, tokenizer):
    running = small_engine.submit(_request(tokenizer, "Write a very long story.", max_new_tokens=2000))
    await running.__anext__()  # admitted: the queue is empty again
    waiting = small_engine.submit(_request(tokenizer, "hi"))
    with pytest.raises(QueueFull) as caught:
        small_engine.submit(_request(tokenizer, "hi"))
    assert caught.value.retry_after_s > 0
    running.cancel()
    waiting.cancel()


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
