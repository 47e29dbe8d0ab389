"""usage.estimated_cost from the worker's --price flags (USD per million tokens), over REST and gRPC.

The secured stack prices the chat model at CHAT_PRICES and the embedding model at EMBEDDING_PRICE
(see conftest.py); the default stack has no prices, so its costs are 0.
"""
from __future__ import annotations

import pytest

from tokenwire.v1 import embedding_pb2, generation_pb2, models_pb2

from .conftest import CHAT_MODEL, CHAT_PRICES, CLIENT_KEYS, EMBEDDING_MODEL, EMBEDDING_PRICE, INTERNAL_WORKER_KEY

HI = [{"role": "user", "content": "Say hello."}]
METADATA = (("authorization", f"Bearer {INTERNAL_WORKER_KEY}"),)


def _chat_cost(prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * CHAT_PRICES[0] + completion_tokens * CHAT_PRICES[1]) / 1e6


def test_rest_chat_cost_streamed_and_not(secured_stack):
    client = secured_stack.openai_client(CLIENT_KEYS[0])
    args = dict(model=CHAT_MODEL, messages=HI, max_tokens=6, temperature=0)
    usage = client.chat.completions.create(**args).usage
    assert usage.estimated_cost == pytest.approx(_chat_cost(usage.prompt_tokens, usage.completion_tokens))
    assert usage.estimated_cost > 0
    chunks = list(client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.estimated_cost == pytest.approx(usage.estimated_cost)


def test_rest_completions_with_several_prompts_add_up_their_costs(secured_stack):
    client = secured_stack.openai_client(CLIENT_KEYS[0])
    reply = client.completions.create(model=CHAT_MODEL, prompt=["One", "Two three"], max_tokens=3, n=2)
    usage = reply.usage
    assert usage.estimated_cost == pytest.approx(_chat_cost(usage.prompt_tokens, usage.completion_tokens))


def test_rest_embeddings_cost(secured_stack):
    client = secured_stack.openai_client(CLIENT_KEYS[0])
    usage = client.embeddings.create(model=EMBEDDING_MODEL, input=["a b c", "d"]).usage
    assert usage.estimated_cost == pytest.approx(usage.prompt_tokens * EMBEDDING_PRICE / 1e6)
    assert usage.estimated_cost > 0


def test_unpriced_models_cost_nothing(client):
    usage = client.chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=2).usage
    assert usage.estimated_cost == 0


def test_grpc_usage_and_model_info_carry_the_prices(secured_stubs):
    request = generation_pb2.GenerateRequest(
        model=CHAT_MODEL, text="Hello", stopping=generation_pb2.StoppingCriteria(max_new_tokens=3)
    )
    usage = secured_stubs.generation.Generate(request, metadata=METADATA).usage
    assert usage.estimated_cost == pytest.approx(_chat_cost(usage.prompt_tokens, usage.completion_tokens))
    streamed = list(secured_stubs.generation.GenerateStream(request, metadata=METADATA))
    assert streamed[-1].usage.estimated_cost == pytest.approx(usage.estimated_cost)
    embed = embedding_pb2.EmbedRequest(model=EMBEDDING_MODEL, inputs=[embedding_pb2.EmbedInput(text="hello")])
    embed_usage = secured_stubs.embedding.Embed(embed, metadata=METADATA).usage
    assert embed_usage.estimated_cost == pytest.approx(embed_usage.prompt_tokens * EMBEDDING_PRICE / 1e6)
    info = secured_stubs.models.GetModel(models_pb2.GetModelRequest(id=CHAT_MODEL), metadata=METADATA)
    assert (info.prices.input_per_million, info.prices.output_per_million) == CHAT_PRICES
