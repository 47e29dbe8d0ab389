"""Every endpoint through the bridge app, in front of the in-process fake gRPC worker."""
from __future__ import annotations

import asyncio
import base64
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import openai
import pytest
from grpc_health.v1 import health_pb2
from starlette.applications import Starlette

from rest_bridge.app import create_app
from rest_bridge.config import METADATA_TIMEOUT_S, BridgeSettings
from rest_bridge.upstream import Upstream
from tests.in_process import listening
from tests.unit.rest_bridge.fake_worker import EMBEDDING_MODEL, GENERATION_MODEL, FakeWorker
from tokenwire.v1 import generation_pb2

USER = [{"role": "user", "content": "hi"}]


def sse_chunks(text: str) -> list[dict[str, Any]]:
    events = text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: {") for e in events[:-2])
    return [json.loads(e.removeprefix("data: ")) for e in events[:-2]]


async def test_chat_completion(client: httpx.AsyncClient, fake_worker: FakeWorker) -> None:
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "org/name:v1", "messages": USER, "temperature": 0, "n": 2},
        headers={"x-request-id": "rid-7"},
    )
    assert response.status_code == 200 and response.headers["x-request-id"] == "rid-7"
    body = response.json()
    assert body["model"] == "org/name:v1" and body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert [c["message"]["content"] for c in body["choices"]] == ["echo: hi", "echo: hi"]
    assert body["usage"]["estimated_cost"] == 0.5
    (request,) = fake_worker.record.requests
    assert request.sampling.HasField("temperature") and not request.sampling.HasField("top_p")
    assert fake_worker.record.metadata[0]["x-request-id"] == "rid-7"


async def test_the_canonical_model_answers_when_none_was_asked(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/completions", json={"prompt": "x"})
    assert response.json()["model"] == GENERATION_MODEL


async def test_chat_stream(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": USER, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = sse_chunks(response.text)
    assert len({(c["id"], c["created"], c["model"]) for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]) == "echo: hi"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 10


async def test_completion_stream_without_usage(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/completions", json={"model": "m", "prompt": [[1, 2], [3]], "stream": True})
    chunks = sse_chunks(response.text)
    assert all("usage" not in c and c["object"] == "text_completion" for c in chunks)
    assert {c["choices"][0]["index"] for c in chunks} == {0, 1}


@pytest.mark.parametrize("stream", [False, True])
async def test_context_overflow_is_a_400_before_any_event(client: httpx.AsyncClient, stream: bool) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "overflow"}], "stream": stream}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")
    assert "2048" in error["message"]


async def test_overload_is_a_429_with_retry_after(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/completions", json={"model": "m", "prompt": ["ok", "busy"], "stream": True})
    assert response.status_code == 429 and response.headers["retry-after"] == "3"
    assert response.json()["error"]["code"] == "queue_full"


async def call_and_disconnect(app: Starlette, body: dict[str, Any], gone: asyncio.Event) -> list[dict[str, Any]]:
    """Runs one request on the ASGI app; the client goes away on `gone` or at the first body byte."""
    payload = json.dumps(body).encode()
    received: list[bool] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if not received:
            received.append(True)
            return {"type": "http.request", "body": payload, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            gone.set()

    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": "POST", "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
        "query_string": b"", "root_path": "", "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 5000), "server": ("bridge", 80), "state": {},
    }
    await asyncio.wait_for(app(scope, receive, send), timeout=5)
    return sent


@pytest.mark.parametrize("stream", [True, False])
async def test_client_disconnect_cancels_the_worker_call(
    app: Starlette, fake_worker: FakeWorker, stream: bool
) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "slow"}], "stream": stream}
    # Non-streaming: the client gives up once the worker is busy with the request.
    gone = fake_worker.record.received if not stream else asyncio.Event()
    sent = await call_and_disconnect(app, body, gone)
    await asyncio.wait_for(fake_worker.record.cancelled.wait(), timeout=5)
    status = sent[0]["status"]
    assert status == (200 if stream else 499)


async def test_embeddings(client: httpx.AsyncClient) -> None:
    floats = (await client.post("/v1/embeddings", json={"input": ["a", "b"]})).json()
    assert floats["model"] == EMBEDDING_MODEL
    assert [d["embedding"] for d in floats["data"]] == [[0.0, 0.5, -1.0], [1.0, 0.5, -1.0]]
    body = {"model": "e", "input": "a", "encoding_format": "base64"}
    packed = (await client.post("/v1/embeddings", json=body)).json()
    assert packed["model"] == "e"
    assert struct.unpack("<3f", base64.b64decode(packed["data"][0]["embedding"])) == (0.0, 0.5, -1.0)


@pytest.mark.parametrize(
    "model_id", [GENERATION_MODEL, f"{GENERATION_MODEL}:abc123", "deploy_id:d1"]
)
async def test_model_lookup(client: httpx.AsyncClient, model_id: str) -> None:
    response = await client.get(f"/v1/models/{model_id}")
    card = {"id": GENERATION_MODEL, "object": "model", "created": 1700000000, "owned_by": "tokenwire"}
    assert response.json().items() >= card.items()
    assert (response.json()["version"], response.json()["deploy_id"]) == ("abc123", "d1")


async def test_models_list_and_unknown_model(client: httpx.AsyncClient) -> None:
    listed = (await client.get("/v1/models")).json()
    assert [m["id"] for m in listed["data"]] == [GENERATION_MODEL, EMBEDDING_MODEL]
    missing = await client.get("/v1/models/org/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


async def test_health(client: httpx.AsyncClient, fake_worker: FakeWorker) -> None:
    ok = await client.get("/health")
    assert (ok.status_code, ok.json()) == (200, {"status": "ok"})
    await fake_worker.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    down = await client.get("/health")
    assert down.status_code == 503 and down.json()["error"]["type"] == "server_error"


class _Stuck(grpc.GenericRpcHandler):
    """Every method of a worker that accepts calls and never answers them."""

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        async def never(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            await asyncio.sleep(3600)
            return b""

        return grpc.unary_unary_rpc_method_handler(never)


@pytest.fixture
async def stuck_worker() -> AsyncIterator[str]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_Stuck(),))
    async with listening(server) as address:
        yield address


async def test_metadata_calls_to_a_stuck_worker_fail_fast(stuck_worker: str) -> None:
    app = create_app(BridgeSettings(worker_address=stuck_worker, request_timeout=600, metadata_timeout=0.2))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge") as http:
        paths = ("/v1/models", f"/v1/models/{GENERATION_MODEL}", "/health")
        # Bounded well above the metadata deadline, far below the request timeout.
        answers = await asyncio.wait_for(asyncio.gather(*(http.get(path) for path in paths)), 60)
    await app.state.upstreams.close()
    for answer in answers:
        assert answer.status_code == 504
        assert answer.json()["error"] == {
            "message": "The request timed out.", "type": "timeout", "param": None, "code": None
        }


def test_the_metadata_deadline_caps_the_request_timeout() -> None:
    assert Upstream("w", timeout=600).call_options("r")["timeout"] == 600
    assert Upstream("w", timeout=600).call_options("r", metadata_call=True)["timeout"] == METADATA_TIMEOUT_S
    assert Upstream("w", timeout=None).call_options("r", metadata_call=True)["timeout"] == METADATA_TIMEOUT_S
    assert Upstream("w", timeout=1).call_options("r", metadata_call=True)["timeout"] == 1
    assert Upstream("w", timeout=600, metadata_timeout=2).call_options("r", metadata_call=True)["timeout"] == 2


async def test_tokenize_and_detokenize(client: httpx.AsyncClient) -> None:
    tokens = (await client.post("/tokenize", json={"model": "m", "prompt": "hi"})).json()
    assert tokens == {"count": 2, "max_model_len": 2048, "tokens": [104, 105], "token_strs": None}
    chat = (await client.post("/tokenize", json={"messages": USER})).json()
    assert chat["count"] == len("<user>hi")
    assert (await client.post("/detokenize", json={"tokens": [104, 105]})).json() == {"prompt": "hi"}


async def test_openai_sdk(app: Starlette, fake_worker: FakeWorker) -> None:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    sdk = openai.AsyncOpenAI(base_url="http://bridge/v1", api_key="unused", http_client=http, max_retries=0)
    async with http:
        completion = await sdk.chat.completions.create(model="m", messages=USER, seed=3)
        assert completion.choices[0].message.content == "echo: hi"
        stream = await sdk.chat.completions.create(
            model="m", messages=USER, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hi"
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 10
        # The SDK asks for base64 by default and decodes it.
        embedding = await sdk.embeddings.create(model="e", input="a")
        assert embedding.data[0].embedding == [0.0, 0.5, -1.0]
        with pytest.raises(openai.BadRequestError) as caught:
            await sdk.chat.completions.create(model="m", messages=USER, temperature=3)
        assert caught.value.code is None and caught.value.param == "temperature"
        with pytest.raises(openai.NotFoundError):
            await sdk.models.retrieve("org/nope")
    assert fake_worker.record.requests[0].sampling.seed == 3
    assert isinstance(fake_worker.record.requests[0], generation_pb2.GenerateRequest)
