"""API keys on the bridge, in front of the fake worker: who gets in, and what the worker receives."""
from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from rest_bridge.app import create_app
from rest_bridge.config import BridgeSettings
from tests.unit.rest_bridge.fake_worker import FakeWorker, fake_worker_serving

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def secured(fake_worker: FakeWorker) -> AsyncIterator[httpx.AsyncClient]:
    settings = BridgeSettings(
        worker_address=fake_worker.address, request_timeout=10, api_keys=("k1", "k2"), worker_api_key="to-worker"
    )
    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge") as http:
        yield http
    await app.state.upstreams.close()


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer k3"}, {"authorization": "k1"}])
async def test_no_or_wrong_key_is_401_and_never_reaches_the_worker(
    secured: httpx.AsyncClient, fake_worker: FakeWorker, headers: dict[str, str]
) -> None:
    response = await secured.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.headers["x-request-id"]
    assert fake_worker.record.requests == []


@pytest.mark.parametrize("key", ["k1", "k2"])
async def test_a_good_key_passes_and_the_worker_gets_the_workers_key(
    secured: httpx.AsyncClient, fake_worker: FakeWorker, key: str
) -> None:
    response = await secured.post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 200
    assert fake_worker.record.metadata[0]["authorization"] == "Bearer to-worker"


async def test_health_and_metrics_need_no_key(secured: httpx.AsyncClient) -> None:
    assert (await secured.get("/health")).status_code == 200
    assert (await secured.get("/metrics")).status_code == 200


async def test_no_keys_configured_means_open(client: httpx.AsyncClient, fake_worker: FakeWorker) -> None:
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    assert "authorization" not in fake_worker.record.metadata[0]


@pytest.mark.parametrize(("worker_key", "status"), [("to-worker", 200), ("not-the-key", 502), (None, 502)])
async def test_health_fails_while_the_worker_refuses_the_bridges_key(worker_key: str | None, status: int) -> None:
    async with fake_worker_serving(api_keys=("to-worker",)) as fake:
        app = create_app(BridgeSettings(worker_address=fake.address, request_timeout=10, worker_api_key=worker_key))
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge") as http:
                response = await http.get("/health")
        finally:
            await app.state.upstreams.close()
    assert response.status_code == status
    if status != 200:
        error = response.json()["error"]
        assert error["type"] == "server_error" and "authenticate to its model worker" in error["message"]


async def test_the_playground_needs_no_key_but_its_api_calls_do(secured: httpx.AsyncClient) -> None:
    assert (await secured.get("/")).status_code == 200
    assert (await secured.get("/static/playground.js")).status_code == 200
    assert (await secured.get("/v1/models")).status_code == 401
