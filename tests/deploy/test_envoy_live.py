"""End to end through a real Envoy (deploy/envoy/envoy.yaml) in front of a real tokenwire worker.

Select it alone with `pytest tests/deploy/test_envoy_live.py`. The worker is the test session's
(tests/conftest.py), shared with the integration tests.
"""
from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Iterator

import grpc
import httpx
import pytest

from tokenwire.v1 import models_pb2, models_pb2_grpc

from .conftest import Envoy, running_envoy

DEFAULT_MODELS = {"HuggingFaceTB/SmolLM2-135M-Instruct", "sentence-transformers/all-MiniLM-L6-v2"}


@pytest.fixture(scope="module")
def envoy(worker_address: str, descriptor: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Envoy]:
    """A real Envoy (deploy/envoy/envoy.yaml) in front of the session's real worker."""
    with running_envoy(tmp_path_factory.mktemp("envoy"), descriptor, [worker_address]) as running:
        yield running


def test_cluster_sees_the_worker_healthy(envoy: Envoy, worker_address: str) -> None:
    flag = f"workers::{worker_address}::health_flags::healthy"
    deadline = time.monotonic() + 20
    while flag not in envoy.admin("/clusters").text and time.monotonic() < deadline:
        time.sleep(0.5)
    assert flag in envoy.admin("/clusters").text
    stats = dict(
        line.split(": ", 1) for line in envoy.admin("/stats?filter=^cluster.workers.health_check.").text.splitlines()
    )
    assert int(stats["cluster.workers.health_check.success"]) >= 1


def test_list_models_over_grpc(envoy: Envoy) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{envoy.listen_port}") as channel:
        reply = models_pb2_grpc.ModelsStub(channel).ListModels(models_pb2.ListModelsRequest(), timeout=10)
    assert DEFAULT_MODELS <= {model.id for model in reply.models}


def test_list_models_over_json_transcoding(envoy: Envoy) -> None:
    response = httpx.get(f"{envoy.url}/v1/models", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert DEFAULT_MODELS <= {model["id"] for model in response.json()["models"]}


def test_generate_stream_over_json_is_newline_delimited(envoy: Envoy) -> None:
    body = {"text": "Hello", "stopping": {"max_new_tokens": 3}}
    with httpx.stream("POST", f"{envoy.url}/v1/generate:stream", json=body, timeout=60) as response:
        assert response.status_code == 200
        events = [json.loads(line) for line in response.iter_lines() if line]
    assert "prompt_info" in events[0] and "usage" in events[-1]
    assert events[-2]["delta"]["finish"]["reason"] == "FINISH_REASON_LENGTH"


def test_grpc_status_becomes_http_status_with_rich_details(envoy: Envoy) -> None:
    # convert_grpc_status: NOT_FOUND arrives as HTTP 404 with the google.rpc.Status as JSON; the
    # details print only because the descriptor set carries google/rpc/error_details.proto.
    response = httpx.get(f"{envoy.url}/v1/models/no-such-org/no-such-model", timeout=10)
    assert response.status_code == 404, response.text
    status = response.json()
    assert status["code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "MODEL_NOT_FOUND"}.items() <= (
        status["details"][0].items()
    )
