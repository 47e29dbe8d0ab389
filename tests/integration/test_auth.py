"""API keys through the real stack: REST `Authorization: Bearer KEY`, gRPC `authorization` metadata.

The secured stack's bridge takes the client keys and sends its own key to the worker, which takes
that key and another internal client's key (see conftest.py). A misconfigured bridge in front of
the same worker sends a worker key the worker refuses.
"""
from __future__ import annotations

from collections.abc import Iterator

import grpc
import httpx
import openai
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.rich_status import details
from tests.servers import ServerProcess, free_port, start
from tokenwire.v1 import generation_pb2, models_pb2

from .conftest import CHAT_MODEL, CLIENT_KEYS, INTERNAL_WORKER_KEY

HI = [{"role": "user", "content": "Hi"}]
WRONG_WORKER_KEY = "not-the-worker-key"
GENERATE = generation_pb2.GenerateRequest(text="Hello", stopping=generation_pb2.StoppingCriteria(max_new_tokens=2))


@pytest.fixture(scope="module")
def misconfigured(secured_stack, tmp_path_factory) -> Iterator[tuple[str, ServerProcess]]:
    """A bridge in front of the secured worker that sends a worker key the worker does not take."""
    port = free_port()
    flags = [f"--api-key={key}" for key in CLIENT_KEYS] + [f"--worker-api-key={WRONG_WORKER_KEY}"]
    args = ["bridge", "--http-host", "127.0.0.1", "--http-port", str(port),
            "--worker-address", secured_stack.grpc_address]
    logs = tmp_path_factory.mktemp("misconfigured")
    bridge = start(f"bridge-{port}", [*args, *flags, "--data-dir", str(logs / "data")], logs)
    url = f"http://127.0.0.1:{port}"
    try:
        # Its /health is never a 200: /metrics tells when it listens.
        bridge.wait_until(lambda: httpx.get(f"{url}/metrics", timeout=2).status_code == 200, 60)
    except BaseException:
        bridge.stop()
        raise
    yield url, bridge
    bridge.stop()


@pytest.mark.parametrize(
    ("headers", "challenge"),
    [
        ({}, 'Bearer realm="tokenwire"'),
        ({"authorization": "Bearer not-a-key"}, 'Bearer realm="tokenwire", error="invalid_token"'),
        ({"authorization": f"Basic {CLIENT_KEYS[0]}"}, 'Bearer realm="tokenwire"'),
    ],
)
def test_rest_without_a_valid_key_is_401_in_the_envelope(secured_stack, headers, challenge):
    body = {"model": CHAT_MODEL, "messages": HI, "max_tokens": 2}
    response = httpx.post(f"{secured_stack.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == challenge
    assert response.json() == {
        "error": {
            "message": response.json()["error"]["message"],
            "type": "authentication_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    assert response.json()["error"]["message"] and "not-a-key" not in response.text


def test_the_sdk_raises_authentication_error_on_a_wrong_key(secured_stack):
    with pytest.raises(openai.AuthenticationError) as caught:
        secured_stack.openai_client("wrong").models.list()
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"


@pytest.mark.parametrize("key", CLIENT_KEYS)
def test_every_configured_key_works_and_the_bridge_authenticates_to_the_worker(secured_stack, key):
    # The worker takes no client key: the answer proves the bridge sent its own worker key.
    client = secured_stack.openai_client(key)
    reply = client.chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=3)
    assert reply.choices[0].message.content is not None
    chunks = list(client.chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=3, stream=True))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_health_and_metrics_stay_open(secured_stack):
    assert httpx.get(f"{secured_stack.url}/health", timeout=10).status_code == 200
    metrics = httpx.get(f"{secured_stack.url}/metrics", timeout=10)
    assert metrics.status_code == 200 and "tokenwire_http_requests_total" in metrics.text


@pytest.mark.parametrize("stream", [False, True])
def test_a_worker_key_the_worker_refuses_is_a_502_for_the_client_and_logged(misconfigured, stream):
    url, bridge = misconfigured
    body = {"model": CHAT_MODEL, "messages": HI, "max_tokens": 2, "stream": stream}
    headers = {"authorization": f"Bearer {CLIENT_KEYS[0]}"}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert response.status_code == 502 and "www-authenticate" not in response.headers
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("server_error", None, None) and error["message"]
    assert WRONG_WORKER_KEY not in response.text and CLIENT_KEYS[0] not in response.text
    log = bridge.log.read_text()
    assert "refused the bridge's worker API key" in log and WRONG_WORKER_KEY not in log


def test_health_of_a_bridge_whose_worker_key_is_refused_is_a_502(misconfigured):
    url, _ = misconfigured
    response = httpx.get(f"{url}/health", timeout=30)
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["type"] == "server_error" and "authenticate to its model worker" in error["message"]


def test_the_sdk_sees_a_refused_worker_key_as_a_server_error_and_a_wrong_client_key_as_401(misconfigured):
    url, _ = misconfigured
    with pytest.raises(openai.InternalServerError) as caught:
        openai.OpenAI(base_url=f"{url}/v1", api_key=CLIENT_KEYS[1], max_retries=0).models.list()
    assert caught.value.status_code == 502
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()


@pytest.mark.parametrize(
    ("metadata", "message"),
    [((), "Missing API key"), ((("authorization", "Bearer wrong"),), "Invalid API key"),
     ((("authorization", f"Bearer {CLIENT_KEYS[0]}"),), "Invalid API key")],
)
def test_grpc_without_a_valid_key_is_unauthenticated_with_error_info(secured_stubs, metadata, message):
    stub = secured_stubs.generation
    for call in (stub.Generate, lambda request, **kw: next(stub.GenerateStream(request, **kw))):
        with pytest.raises(grpc.RpcError) as caught:
            call(GENERATE, metadata=metadata, timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert message in caught.value.details()
        info = details(caught.value)["ErrorInfo"]
        assert (info.reason, info.domain) == ("INVALID_API_KEY", "tokenwire.v1")
    with pytest.raises(grpc.RpcError) as caught:
        secured_stubs.models.ListModels(models_pb2.ListModelsRequest(), metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_grpc_with_a_worker_key_is_served(secured_stubs):
    metadata = (("authorization", f"Bearer {INTERNAL_WORKER_KEY}"),)
    reply = secured_stubs.generation.Generate(GENERATE, metadata=metadata, timeout=60)
    assert reply.usage.completion_tokens == 2
    events = list(secured_stubs.generation.GenerateStream(GENERATE, metadata=metadata))
    assert events[0].HasField("prompt_info") and events[-1].HasField("usage")


def test_grpc_health_and_reflection_stay_open(secured_stubs, secured_channel):
    reply = secured_stubs.health.Check(health_pb2.HealthCheckRequest(service="tokenwire.v1.Generation"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(secured_channel)
    reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    assert "tokenwire.v1.Generation" in {s.name for s in reply.list_services_response.service}
