"""End to end through a real Envoy (deploy/envoy.yaml) in front of a real tokenwire worker.

Select it alone with `pytest tests/deploy/test_envoy_live.py`. The worker's first start converts
the default model's weights into its cache dir (up to about a minute); later starts take seconds.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tokenwire.v1 import models_pb2, models_pb2_grpc

from .conftest import ROOT, envoy_binary, free_port, write_envoy_config

DEFAULT_MODELS = {"HuggingFaceTB/SmolLM2-135M-Instruct", "sentence-transformers/all-MiniLM-L6-v2"}


def wait_for(what: str, ready: Callable[[], bool], proc: subprocess.Popen, log: pathlib.Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what}: exited with {proc.returncode}\n{log.read_text()[-4000:]}")
        try:
            if ready():
                return
        except (grpc.RpcError, httpx.HTTPError):
            pass
        time.sleep(0.5)
    pytest.fail(f"{what}: not ready after {timeout:.0f} s\n{log.read_text()[-4000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def worker_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    command = [sys.executable, "-m", "tokenwire.cli", "worker", "--grpc-host", "127.0.0.1", "--grpc-port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=out, stderr=subprocess.STDOUT
        )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    health = health_pb2_grpc.HealthStub(channel)

    def serving() -> bool:
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    try:
        wait_for("worker", serving, proc, log, timeout=240)
        yield port
    finally:
        channel.close()
        stop(proc)


@dataclass
class Envoy:
    listen_port: int
    admin_port: int
    worker_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    def admin(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5)


@pytest.fixture(scope="module")
def envoy(worker_port: int, descriptor: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Envoy]:
    directory = tmp_path_factory.mktemp("envoy")
    running = Envoy(listen_port=free_port(), admin_port=free_port(), worker_port=worker_port)
    config = write_envoy_config(
        directory / "envoy.yaml", descriptor, worker=("127.0.0.1", worker_port),
        listen_port=running.listen_port, admin_port=running.admin_port,
    )
    log = directory / "envoy.log"
    command = [envoy_binary(), "-c", str(config), "--disable-hot-restart", "--log-level", "warning"]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for("envoy", lambda: running.admin("/ready").status_code == 200, proc, log, timeout=30)
        yield running
    finally:
        stop(proc)


def test_cluster_sees_the_worker_healthy(envoy: Envoy) -> None:
    flag = f"workers::127.0.0.1:{envoy.worker_port}::health_flags::healthy"
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


def test_grpc_status_becomes_http_status(envoy: Envoy) -> None:
    # convert_grpc_status: NOT_FOUND from the worker arrives as HTTP 404 with a google.rpc.Status body.
    response = httpx.get(f"{envoy.url}/v1/models/no-such-org/no-such-model", timeout=10)
    assert response.status_code == 404, response.text
    assert response.json()["code"] == grpc.StatusCode.NOT_FOUND.value[0]
