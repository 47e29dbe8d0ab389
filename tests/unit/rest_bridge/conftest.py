"""Fixtures: a fake in-process gRPC worker and the bridge in front of it (no network, no model)."""
from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette

from rest_bridge.app import create_app
from rest_bridge.config import BridgeSettings
from tests.unit.rest_bridge.fake_worker import FakeWorker, fake_worker_serving


@pytest.fixture
async def fake_worker() -> AsyncIterator[FakeWorker]:
    async with fake_worker_serving() as fake:
        yield fake


@pytest.fixture
async def app(fake_worker: FakeWorker) -> AsyncIterator[Starlette]:
    application = create_app(BridgeSettings(worker_address=fake_worker.address, request_timeout=10))
    yield application
    await application.state.upstreams.close()


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge") as http:
        yield http
