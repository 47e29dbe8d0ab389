"""Routing by model, with real workers: one bridge sends the embedding model's requests to a
worker of its own (`--worker MODEL=ADDRESS`) and everything else to the session's worker.

The session's worker serves the embedding model too, so a request that reached it by mistake
would still succeed: only stopping the embedding worker tells where the requests went.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import openai
import pytest

from tests.conftest import CACHE_DIR
from tests.servers import ServerProcess, start_bridge, start_worker

from .conftest import CHAT_MODEL, EMBEDDING_MODEL


@dataclass(frozen=True)
class Routed:
    client: openai.OpenAI
    embedder: ServerProcess


@pytest.fixture(scope="module")
def routed(worker_address: str, tmp_path_factory) -> Iterator[Routed]:
    logs = tmp_path_factory.mktemp("routing")
    address, embedder = start_worker(
        logs, "--cache-dir", str(CACHE_DIR), "--no-default-models", "--embedding-model", EMBEDDING_MODEL
    )
    try:
        url, bridge = start_bridge(logs, worker_address, "--worker", f"{EMBEDDING_MODEL}={address}")
        try:
            yield Routed(openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120), embedder)
        finally:
            bridge.stop()
    finally:
        embedder.stop()


def _chat(client: openai.OpenAI) -> str:
    reply = client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0
    )
    return reply.choices[0].message.content or ""


def test_one_bridge_serves_the_models_of_two_workers(routed: Routed) -> None:
    assert _chat(routed.client)
    vectors = routed.client.embeddings.create(model=EMBEDDING_MODEL, input=["hello", "world"])
    assert [len(item.embedding) for item in vectors.data] == [384, 384]
    assert sorted(model.id for model in routed.client.models.list()) == sorted([CHAT_MODEL, EMBEDDING_MODEL])


def test_a_worker_that_is_down_fails_only_its_models(routed: Routed) -> None:
    routed.embedder.stop()
    with pytest.raises(openai.InternalServerError) as caught:
        routed.client.embeddings.create(model=EMBEDDING_MODEL, input=["hello"])
    assert caught.value.status_code == 503
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert _chat(routed.client)
    assert [model.id for model in routed.client.models.list()] == [CHAT_MODEL]
