"""Routing by model: one bridge, a default worker and a worker named for the embedding model
(`--worker MODEL=ADDRESS`). Both fake workers serve both models, so only the routing decides
which one answers."""
from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import httpx
import pytest

from rest_bridge.app import create_app
from rest_bridge.config import BridgeSettings, add_bridge_arguments
from rest_bridge.upstream import Upstreams
from tests.unit.rest_bridge.fake_worker import EMBEDDING_MODEL, GENERATION_MODEL, FakeWorker, fake_worker_serving

CHAT = {"model": GENERATION_MODEL, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def embedder() -> AsyncIterator[FakeWorker]:
    async with fake_worker_serving() as fake:
        yield fake


@pytest.fixture
async def routed(fake_worker: FakeWorker, embedder: FakeWorker) -> AsyncIterator[httpx.AsyncClient]:
    settings = BridgeSettings(
        worker_address=fake_worker.address, request_timeout=10, model_workers={EMBEDDING_MODEL: embedder.address}
    )
    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge") as http:
        yield http
    await app.state.upstreams.close()


async def test_each_model_goes_to_its_worker(routed, fake_worker: FakeWorker, embedder: FakeWorker) -> None:
    assert (await routed.post("/v1/embeddings", json={"model": EMBEDDING_MODEL, "input": "a"})).status_code == 200
    versioned = {"model": f"{EMBEDDING_MODEL}:abc123", "input": "b"}
    assert (await routed.post("/v1/embeddings", json=versioned)).status_code == 200
    assert (await routed.post("/v1/chat/completions", json=CHAT)).status_code == 200
    tokenize = {"model": EMBEDDING_MODEL, "prompt": "c"}
    assert (await routed.post("/tokenize", json=tokenize)).status_code == 200
    assert [type(r).__name__ for r in embedder.record.requests] == ["EmbedRequest", "EmbedRequest", "TokenizeRequest"]
    assert [type(r).__name__ for r in fake_worker.record.requests] == ["GenerateRequest"]


async def test_the_model_list_merges_the_workers_each_model_once(routed) -> None:
    listed = (await routed.get("/v1/models")).json()["data"]
    assert sorted(model["id"] for model in listed) == sorted([GENERATION_MODEL, EMBEDDING_MODEL])
    card = await routed.get(f"/v1/models/{EMBEDDING_MODEL}")
    assert card.status_code == 200 and card.json()["id"] == EMBEDDING_MODEL
    assert (await routed.get("/health")).json() == {"status": "ok"}


async def test_a_worker_that_is_down_fails_its_models_only(routed, embedder: FakeWorker) -> None:
    await embedder.server.stop(grace=None)
    down = await routed.post("/v1/embeddings", json={"model": EMBEDDING_MODEL, "input": "a"})
    assert down.status_code == 503 and int(down.headers["retry-after"]) >= 1
    assert down.json()["error"]["type"] == "server_error"
    assert (await routed.get(f"/v1/models/{EMBEDDING_MODEL}")).status_code == 503
    assert (await routed.post("/v1/chat/completions", json=CHAT)).status_code == 200
    # The list still shows what the other worker serves (not its copy of the embedding model,
    # which gets no requests); /health names the worker that is down.
    assert [model["id"] for model in (await routed.get("/v1/models")).json()["data"]] == [GENERATION_MODEL]
    assert (await routed.get("/health")).status_code == 503


async def test_every_worker_down_is_a_503_for_the_list(routed, fake_worker: FakeWorker, embedder: FakeWorker) -> None:
    for fake in (fake_worker, embedder):
        await fake.server.stop(grace=None)
    listed = await routed.get("/v1/models")
    assert listed.status_code == 503 and listed.headers["retry-after"] == "1"


def test_routes_by_model_id_and_version() -> None:
    upstreams = Upstreams("default:1", None, model_addresses={"org/a": "a:1", "org/b": "a:1", "org/c": "c:1"})
    assert [u.address for u in upstreams.all] == ["default:1", "a:1", "c:1"]
    assert upstreams.for_model("org/b") is upstreams.for_model("org/a:1234") is upstreams.all[1]
    for other in (None, "", "org/z", "deploy_id:d1", "org"):
        assert upstreams.for_model(other) is upstreams.default


def test_worker_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENWIRE_WORKERS", "org/a=10.0.0.1:50051")
    parser = argparse.ArgumentParser()
    add_bridge_arguments(parser)
    args = parser.parse_args(["--worker", "org/b=[::1]:9000"])
    settings = BridgeSettings.from_args(args)
    assert settings.model_workers == {"org/a": "10.0.0.1:50051", "org/b": "[::1]:9000"}
    with pytest.raises(SystemExit, match="expected MODEL=HOST:PORT"):
        BridgeSettings.from_args(parser.parse_args(["--worker", "org/a"]))
