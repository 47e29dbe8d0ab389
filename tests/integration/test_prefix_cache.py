"""Prefix caching as clients see it, through the real bridge and worker: cached prompt tokens in
the usage of chat, completions and streams (openai client) and in gRPC's PromptInfo and Usage,
the worker's KV-cache metrics and model card. Every test's prompt starts with a text of its own,
so its first request misses the cache whatever ran before."""
from __future__ import annotations

import uuid

from tests.prometheus import scrape
from tokenwire.v1 import generation_pb2, models_pb2

from .conftest import BRIDGE_WORKER_KEY, CHAT_MODEL

BLOCK = 32  # the CPU runner's KV-cache block size
POLICY = (
    "You are the support assistant of a bicycle shop. Opening hours: Monday to Friday 9:00-18:00, "
    "Saturday 10:00-14:00, closed on Sundays. Repairs take two working days; a flat tyre is fixed "
    "while you wait. We sell city, road and mountain bikes, helmets, locks and lights. Returns are "
    "accepted within 30 days with the receipt. Answer briefly and politely."
)


def _system(tag: str) -> str:
    return f"[{tag}] {POLICY}"


def _full_blocks(tokens: int) -> int:
    """The prompt tokens a repeated request finds cached: the full blocks before its last token."""
    return (tokens - 1) // BLOCK * BLOCK


def test_a_repeated_chat_prompt_reports_its_cached_tokens_and_the_same_answer(client):
    messages = [
        {"role": "system", "content": _system(uuid.uuid4().hex)},
        {"role": "user", "content": "When are you open on Saturday?"},
    ]
    args = dict(model=CHAT_MODEL, messages=messages, temperature=0, max_tokens=16)
    first = client.chat.completions.create(**args)
    again = client.chat.completions.create(**args)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert first.usage.prompt_tokens > 3 * BLOCK
    assert again.usage.prompt_tokens_details.cached_tokens == _full_blocks(again.usage.prompt_tokens)
    assert again.choices[0].message.content == first.choices[0].message.content


def test_a_streamed_chat_reports_cached_tokens_in_its_usage_chunk(client):
    system = {"role": "system", "content": _system(uuid.uuid4().hex)}
    client.chat.completions.create(
        model=CHAT_MODEL, messages=[system, {"role": "user", "content": "Do you sell helmets?"}], max_tokens=4
    )
    chunks = list(client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[system, {"role": "user", "content": "How long does a repair take?"}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    ))
    usage = chunks[-1].usage
    # The system message's blocks (over 3 of them) came from the first request; the question differs.
    assert 3 * BLOCK <= usage.prompt_tokens_details.cached_tokens < usage.prompt_tokens


def test_completions_report_cached_tokens(client):
    prompt = f"{_system(uuid.uuid4().hex)}\nQuestion: can I return a lock?\nAnswer:"
    args = dict(model=CHAT_MODEL, prompt=prompt, temperature=0, max_tokens=8)
    first, again = client.completions.create(**args), client.completions.create(**args)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert again.usage.prompt_tokens_details.cached_tokens == _full_blocks(again.usage.prompt_tokens)
    assert again.choices[0].text == first.choices[0].text


def test_a_conversations_second_turn_finds_the_first_turn_cached(client):
    messages = [
        {"role": "system", "content": _system(uuid.uuid4().hex)},
        {"role": "user", "content": "What bikes do you sell?"},
    ]
    first = client.chat.completions.create(model=CHAT_MODEL, messages=messages, temperature=0, max_tokens=40)
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And do you sell lights?"},
    ]
    second = client.chat.completions.create(model=CHAT_MODEL, messages=messages, temperature=0, max_tokens=8)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens // BLOCK * BLOCK
    assert cached < second.usage.prompt_tokens


def test_grpc_reports_cached_tokens_in_prompt_info_and_usage(stub):
    request = generation_pb2.GenerateRequest(
        model=CHAT_MODEL,
        text=f"{_system(uuid.uuid4().hex)}\nThe shop opens at",
        sampling=generation_pb2.SamplingParams(temperature=0),
        stopping=generation_pb2.StoppingCriteria(max_new_tokens=4),
    )
    first = stub.Generate(request, timeout=60)
    events = list(stub.GenerateStream(request, timeout=60))
    info, usage = events[0].prompt_info, events[-1].usage
    assert first.prompt_info.cached_tokens == first.usage.cached_tokens == 0
    assert info.cached_tokens == usage.cached_tokens == _full_blocks(info.prompt_tokens) > 0
    assert "".join(e.delta.text for e in events if e.HasField("delta")) == first.sequences[0].text


def test_the_worker_exports_kv_cache_and_prefix_cache_metrics(secured_stack, secured_stubs):
    metadata = (("authorization", f"Bearer {BRIDGE_WORKER_KEY}"),)
    request = generation_pb2.GenerateRequest(
        model=CHAT_MODEL,
        text=f"{_system(uuid.uuid4().hex)}\nReturns are accepted within",
        stopping=generation_pb2.StoppingCriteria(max_new_tokens=2),
    )
    secured_stubs.generation.Generate(request, metadata=metadata, timeout=60)
    before = scrape(secured_stack.worker_metrics_url)
    reply = secured_stubs.generation.Generate(request, metadata=metadata, timeout=60)
    card = secured_stubs.models.GetModel(models_pb2.GetModelRequest(id=CHAT_MODEL), metadata=metadata, timeout=10)
    after = scrape(secured_stack.worker_metrics_url)
    model = {"model": CHAT_MODEL}

    def delta(name: str) -> float:
        return after.value(name, **model) - before.value(name, **model)

    assert delta("tokenwire_engine_prefix_cache_queried_tokens_total") == reply.usage.prompt_tokens
    assert delta("tokenwire_engine_prefix_cache_hit_tokens_total") == reply.usage.cached_tokens > 0
    assert after.value("tokenwire_engine_preemptions_total", **model) == 0
    assert 0 <= after.value("tokenwire_engine_kv_cache_usage", **model) <= 1
    assert after.value("tokenwire_engine_kv_cache_capacity_tokens", **model) == card.kv_cache.tokens
    assert card.kv_cache.block_size == BLOCK and card.kv_cache.prefix_caching
    assert card.kv_cache.tokens == card.kv_cache.blocks * BLOCK and card.kernels in ("tokenwire", "torch")


def test_the_model_card_shows_the_kv_cache(http):
    card = http.get(f"/v1/models/{CHAT_MODEL}").json()
    cache = card["kv_cache"]
    assert cache["block_size"] == BLOCK and cache["tokens"] == cache["blocks"] * BLOCK and cache["prefix_caching"]
