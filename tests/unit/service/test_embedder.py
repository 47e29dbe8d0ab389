"""The embedder alone, on a small random BERT: dynamic batching of concurrent calls, and the order
in which waiting calls are taken."""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
from transformers import BertConfig, BertModel

from service.engine.embedder import Embedder
from service.engine.encoder import Encoder, create_encoder

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    return create_encoder(BertModel(config).eval(), pooling="mean", pad_token_id=0)


def _ids(i: int) -> list[int]:
    """A sentence of 2 to 8 tokens between CLS (1) and SEP (2)."""
    return [1, *((7 * i + k) % 90 + 5 for k in range(i % 7 + 2)), 2]


@contextmanager
def _embedder(
    encoder: Encoder, monkeypatch: pytest.MonkeyPatch, seen: Callable[[list[list[int]]], None], **options: float
) -> Iterator[Embedder]:
    """An embedder that shows `seen` the inputs of each batch before it runs them."""
    embedder = Embedder(encoder, CPU, **options)
    run = embedder._embed_all

    def recorded(inputs: list[list[int]]) -> torch.Tensor:
        seen(inputs)
        return run(inputs)

    monkeypatch.setattr(embedder, "_embed_all", recorded)
    try:
        yield embedder
    finally:
        embedder.close()


async def test_concurrent_calls_are_merged_and_each_gets_its_own_rows(encoder, monkeypatch):
    inputs = [_ids(i) for i in range(24)]
    lone_sizes: list[int] = []
    with _embedder(encoder, monkeypatch, lambda batch: lone_sizes.append(len(batch)), max_wait_s=0.0) as lone:
        alone = [await lone.embed([ids]) for ids in inputs[:3]]
    assert lone_sizes == [1, 1, 1]  # one caller at a time: nothing to merge
    # A window far longer than the calls take to arrive, closed as soon as the batch is full: the
    # 24 calls are one batch however slow the machine is.
    sizes: list[int] = []
    with _embedder(
        encoder, monkeypatch, lambda batch: sizes.append(len(batch)), max_batch=len(inputs), max_wait_s=60.0
    ) as merging:
        together = await asyncio.gather(*(merging.embed([ids]) for ids in inputs))
    assert sizes == [len(inputs)]
    for one, batched in zip(alone, together[:3]):
        torch.testing.assert_close(batched, one, atol=1e-5, rtol=1e-4)


async def test_a_call_with_several_inputs_keeps_their_order(encoder, monkeypatch):
    short, long = _ids(0), _ids(6) * 3
    with _embedder(encoder, monkeypatch, lambda batch: None) as embedder:
        pair = await embedder.embed([long, short])
        torch.testing.assert_close(pair[0], (await embedder.embed([long]))[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(pair[1], (await embedder.embed([short]))[0], atol=1e-5, rtol=1e-4)


async def test_waiting_calls_are_taken_by_priority_then_arrival(encoder, monkeypatch):
    """Calls queued while a batch runs: the lowest priority value first, equal ones by arrival;
    each call here fills a batch, so the batches show the order."""
    running, release = threading.Event(), threading.Event()
    batches: list[int] = []

    def seen(inputs: list[list[int]]) -> None:
        batches.append(inputs[0][1])  # each call's own token
        if len(batches) == 1:
            running.set()
            release.wait()

    with _embedder(encoder, monkeypatch, seen) as embedder:

        def call(token: int, priority: int) -> asyncio.Future[torch.Tensor]:
            return asyncio.ensure_future(embedder.embed([[1, token, 2]] * 32, priority=priority))

        first = call(50, 0)
        await asyncio.to_thread(running.wait)
        queued = [call(51, 5), call(52, 1), call(53, 5), call(54, -2)]
        await asyncio.sleep(0)  # each call is queued once its coroutine starts
        release.set()
        await asyncio.gather(first, *queued)
    assert batches == [50, 54, 52, 51, 53]
