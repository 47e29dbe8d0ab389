"""The embedder alone, on the real default embedding model: dynamic batching of concurrent calls."""
from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from service.models.loading import load_embedding_model


@pytest.fixture(scope="module")
def embedding_model(worker_settings):
    model = load_embedding_model(worker_settings.embedding_models[0], worker_settings)
    yield model
    model.embedder.close()


def _ids(model, text: str) -> list[int]:
    return model.tokenizer.encode(text, add_special_tokens=True)


async def test_concurrent_calls_are_merged_and_each_gets_its_own_rows(embedding_model, monkeypatch):
    embedder = embedding_model.embedder
    texts = [f"sentence number {i} " + "word " * (i % 7) for i in range(24)]
    sizes: list[int] = []
    run = embedder._embed_all

    def recorded(inputs):
        sizes.append(len(inputs))
        return run(inputs)

    monkeypatch.setattr(embedder, "_embed_all", recorded)
    alone = [await embedder.embed([_ids(embedding_model, t)]) for t in texts[:3]]
    assert sizes == [1, 1, 1]  # one caller at a time: nothing to merge
    sizes.clear()
    together = await asyncio.gather(*(embedder.embed([_ids(embedding_model, t)]) for t in texts))

    assert len(sizes) < len(texts) and sum(sizes) == len(texts)  # merged, nothing lost
    for one, batched in zip(alone, together[:3]):
        torch.testing.assert_close(batched, one, atol=1e-5, rtol=1e-4)


async def test_a_call_with_several_inputs_keeps_their_order(embedding_model):
    embedder = embedding_model.embedder
    short, long = _ids(embedding_model, "a cat"), _ids(embedding_model, "a much longer sentence about dogs " * 4)
    pair = await embedder.embed([long, short])
    torch.testing.assert_close(pair[0], (await embedder.embed([long]))[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pair[1], (await embedder.embed([short]))[0], atol=1e-5, rtol=1e-4)


async def test_waiting_calls_are_taken_by_priority_then_arrival(embedding_model, monkeypatch):
    """Calls queued while a batch runs: the lowest priority value first, equal ones by arrival;
    each call here fills a batch, so the batches show the order."""
    embedder = embedding_model.embedder
    running, release = threading.Event(), threading.Event()
    batches: list[int] = []
    run = embedder._embed_all

    def recorded(inputs):
        batches.append(inputs[0][1])  # each call's own token
        if len(batches) == 1:
            running.set()
            release.wait()
        return run(inputs)

    monkeypatch.setattr(embedder, "_embed_all", recorded)

    def call(token: int, priority: int):
        return asyncio.ensure_future(embedder.embed([[101, token, 102]] * 32, priority=priority))

    first = call(1000, 0)
    await asyncio.to_thread(running.wait)
    queued = [call(1001, 5), call(1002, 1), call(1003, 5), call(1004, -2)]
    await asyncio.sleep(0)  # each call is queued once its coroutine starts
    release.set()
    await asyncio.gather(first, *queued)
    assert batches == [1000, 1004, 1002, 1001, 1003]
