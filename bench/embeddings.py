"""Embeddings through tokenwire's REST API against sentence-transformers in this process, same
model, same sentences: batches of 32 per request, and many clients sending one sentence each.

The REST clients use aiohttp: they share the machine's cores with the server, and httpx's async
client took ~7 ms of CPU per request here against aiohttp's ~0.4 ms (64 clients, one sentence per
request), which made the clients, not the server, the limit."""
from __future__ import annotations

import asyncio
import base64
import itertools
import pathlib
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

from bench.models import EMBEDDING_MODEL_ID

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

_SUBJECTS = ("The committee", "A small cat", "My neighbour", "The new processor", "Stock markets",
             "The river", "Our support team", "A young engineer", "The orchestra", "This recipe",
             "The city council", "An old lighthouse keeper", "The research group", "A delivery drone",
             "The museum", "Her grandmother")
_VERBS = ("reviewed", "ignored", "celebrated", "measured", "described", "rebuilt", "questioned",
          "photographed", "simplified", "predicted", "borrowed", "translated")
_OBJECTS = ("the quarterly budget", "a quiet mountain village", "the final chapter of the report",
            "an unusual weather pattern", "the broken coffee machine", "a list of open questions",
            "the results of the clinical trial", "a forgotten family recipe")
_TAILS = ("before sunrise.", "after a long and heated debate about priorities.", "with surprising care.",
          "while everyone else was asleep.", "for the second time this year.", "without telling anyone.")


def sentences(count: int) -> list[str]:
    """`count` distinct English sentences of varied length, the same in every run."""
    combos = list(itertools.product(_SUBJECTS, _VERBS, _OBJECTS, _TAILS))
    random.Random(0).shuffle(combos)
    return [f"{subject} {verb} {obj} {tail}" for subject, verb, obj, tail in combos[:count]]


@dataclass(frozen=True)
class EmbeddingComparison:
    """Sentences per second, median over the repeats."""

    # "batch" (many sentences per request) or "single" (one sentence per request, many clients).
    kind: str
    # What the REST clients send, and what the in-process side does with the same sentences.
    workload: str
    baseline: str
    rest: float
    in_process: float

    @property
    def ratio(self) -> float:
        return self.rest / self.in_process


async def _post(session: aiohttp.ClientSession, texts: Sequence[str]) -> None:
    # base64, as the official openai client requests by default.
    body = {"model": EMBEDDING_MODEL_ID, "input": list(texts), "encoding_format": "base64"}
    async with session.post("embeddings", json=body) as reply:
        reply.raise_for_status()
        data = (await reply.json())["data"]
    if len(data) != len(texts) or not base64.b64decode(data[0]["embedding"]):
        raise RuntimeError(f"expected {len(texts)} embeddings, got {len(data)}")


def _session(base_url: str, clients: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        base_url=base_url.rstrip("/") + "/",  # relative paths append to it
        connector=aiohttp.TCPConnector(limit=clients),
        timeout=aiohttp.ClientTimeout(total=120),
    )


def rest_batches(base_url: str, texts: Sequence[str], batch: int) -> float:
    """One client sending `batch` sentences per request, one request after another."""

    async def run() -> float:
        async with _session(base_url, 1) as session:
            start = time.perf_counter()
            for offset in range(0, len(texts), batch):
                await _post(session, texts[offset:offset + batch])
            return len(texts) / (time.perf_counter() - start)

    return asyncio.run(run())


def rest_concurrent(base_url: str, texts: Sequence[str], clients: int) -> float:
    """`clients` concurrent clients, each sending one sentence per request."""

    async def run() -> float:
        async with _session(base_url, clients) as session:

            async def one_client(index: int) -> None:
                for text in texts[index::clients]:
                    await _post(session, [text])

            start = time.perf_counter()
            await asyncio.gather(*(one_client(i) for i in range(clients)))
            return len(texts) / (time.perf_counter() - start)

    return asyncio.run(run())


def in_process_batches(model: SentenceTransformer, texts: Sequence[str], batch: int) -> float:
    start = time.perf_counter()
    model.encode(list(texts), batch_size=batch)
    return len(texts) / (time.perf_counter() - start)


def in_process_one_at_a_time(model: SentenceTransformer, texts: Sequence[str]) -> float:
    start = time.perf_counter()
    for text in texts:
        model.encode([text])
    return len(texts) / (time.perf_counter() - start)


def _median_alternating(repeats: int, rest: Callable[[], float], local: Callable[[], float]) -> tuple[float, float]:
    pairs = [(rest(), local()) for _ in range(repeats)]
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def compare(base_url: str, model_dir: pathlib.Path, device: str, *, batch: int = 32, batch_sentences: int = 1024,
            clients: int = 64, single_sentences: int = 256, repeats: int = 3) -> list[EmbeddingComparison]:
    """Both comparisons, REST and in-process alternating, after one warm-up of each side."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device=device)
    texts = sentences(max(batch_sentences, single_sentences))
    rest_batches(base_url, texts[:batch], batch)
    in_process_batches(model, texts[:batch], batch)

    results = []
    rest, local = _median_alternating(
        repeats,
        lambda: rest_batches(base_url, texts[:batch_sentences], batch),
        lambda: in_process_batches(model, texts[:batch_sentences], batch),
    )
    results.append(EmbeddingComparison(
        "batch", f"{batch} sentences per request, 1 client", f"encode(batch_size={batch})", rest, local))
    print(f"embeddings, batches of {batch}: REST {rest:.0f}/s, in-process {local:.0f}/s", file=sys.stderr, flush=True)
    rest, local = _median_alternating(
        repeats,
        lambda: rest_concurrent(base_url, texts[:single_sentences], clients),
        lambda: in_process_one_at_a_time(model, texts[:single_sentences]),
    )
    results.append(EmbeddingComparison(
        "single", f"1 sentence per request, {clients} clients", "encode() one sentence at a time", rest, local))
    print(f"embeddings, {clients} clients x 1 sentence: REST {rest:.0f}/s, in-process one at a time {local:.0f}/s",
          file=sys.stderr, flush=True)
    return results
