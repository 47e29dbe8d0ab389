from __future__ import annotations

import httpx
import openai
import pytest

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
