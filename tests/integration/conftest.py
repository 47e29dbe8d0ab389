from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import httpx
import openai
import pytest

from tests.conftest import CACHE_DIR
from tests.servers import free_port, start_bridge, start_worker
from tokenwire.stubs import WorkerStubs
from tokenwire.v1 import generation_pb2_grpc

CHAT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="session")
def client(bridge_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{bridge_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture
def async_client(bridge_url) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{bridge_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def http(bridge_url) -> httpx.Client:
    with httpx.Client(base_url=bridge_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def worker_channel(worker_address) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(worker_address) as channel:
        yield channel


@pytest.fixture(scope="session")
def stubs(worker_channel) -> WorkerStubs:
    """The stubs of the session's worker (no API key)."""
    return WorkerStubs.on(worker_channel)


@pytest.fixture(scope="session")
def stub(stubs) -> generation_pb2_grpc.GenerationStub:
    """The session's worker's Generation stub."""
    return stubs.generation


# The secured stack: keys REST clients use; the bridge's key to the worker and a key of some
# other internal gRPC client; prices in USD per million prompt / completion tokens.
CLIENT_KEYS = ("client-key-1", "client-key-2")
BRIDGE_WORKER_KEY, INTERNAL_WORKER_KEY = "bridge-key", "internal-key"
CHAT_PRICES = (2.0, 6.0)
EMBEDDING_PRICE = 0.5


@dataclass(frozen=True)
class SecuredStack:
    """A worker and a bridge that both require API keys; the worker also has prices and metrics."""

    url: str  # the bridge, e.g. http://127.0.0.1:PORT (no /v1)
    grpc_address: str
    worker_metrics_url: str

    def openai_client(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def secured_stack(tmp_path_factory) -> Iterator[SecuredStack]:
    logs = tmp_path_factory.mktemp("secured")
    metrics_port = free_port()
    worker_flags = [
        f"--api-key={BRIDGE_WORKER_KEY}",
        f"--api-key={INTERNAL_WORKER_KEY}",
        f"--price={CHAT_MODEL}={CHAT_PRICES[0]},{CHAT_PRICES[1]}",
        f"--price={EMBEDDING_MODEL}={EMBEDDING_PRICE},0",
        f"--metrics-port={metrics_port}",
    ]
    # Readiness is polled with grpc.health.v1 Check, which needs no key.
    address, worker = start_worker(logs, "--cache-dir", str(CACHE_DIR), *worker_flags)
    try:
        bridge_flags = [f"--api-key={key}" for key in CLIENT_KEYS]
        url, bridge = start_bridge(logs, address, *bridge_flags, f"--worker-api-key={BRIDGE_WORKER_KEY}")
    except BaseException:
        worker.stop()
        raise
    yield SecuredStack(url, address, f"http://127.0.0.1:{metrics_port}/metrics")
    bridge.stop()
    worker.stop()


@pytest.fixture(scope="session")
def secured_channel(secured_stack) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(secured_stack.grpc_address) as channel:
        yield channel


@pytest.fixture(scope="session")
def secured_stubs(secured_channel) -> WorkerStubs:
    """The stubs of the secured worker; its tokenwire.v1 calls need a key in their metadata."""
    return WorkerStubs.on(secured_channel)
