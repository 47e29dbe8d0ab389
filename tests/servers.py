"""Real tokenwire processes on loopback for tests: start, wait until ready, stop."""
from __future__ import annotations

import functools
import os
import pathlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A worker's first start converts the default model (about a minute); later starts take seconds.
WORKER_START_TIMEOUT_S = 300.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    name: str
    process: subprocess.Popen
    log: pathlib.Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_until(self, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if ready():
                    return
            except (grpc.RpcError, httpx.HTTPError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(name: str, args: list[str], log_dir: pathlib.Path) -> ServerProcess:
    log = log_dir / f"{name}.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:  # a restarted server adds to its log
        process = subprocess.Popen(
            [sys.executable, "-m", "tokenwire.cli", *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    return ServerProcess(name, process, log)


def grpc_serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def start_workers(log_dir: pathlib.Path, *extra: str, ports: Sequence[int | None] = (None,)) -> list[tuple[str, ServerProcess]]:
    """One worker per port (None: a free one), started together, once they all serve."""
    workers: list[tuple[str, ServerProcess]] = []
    try:
        for port in ports:
            port = port or free_port()
            args = ["worker", "--grpc-host", "127.0.0.1", "--grpc-port", str(port), *extra]
            workers.append((f"127.0.0.1:{port}", start(f"worker-{port}", args, log_dir)))
        for address, worker in workers:
            worker.wait_until(functools.partial(grpc_serving, address), WORKER_START_TIMEOUT_S)
    except BaseException:
        for _, worker in workers:
            worker.stop()
        raise
    return workers


def start_worker(log_dir: pathlib.Path, *extra: str, port: int | None = None) -> tuple[str, ServerProcess]:
    """A worker on `port` (a free one by default), once it serves."""
    [worker] = start_workers(log_dir, *extra, ports=(port,))
    return worker


def start_bridge(
    log_dir: pathlib.Path, worker_address: str, *extra: str, data_dir: pathlib.Path | None = None
) -> tuple[str, ServerProcess]:
    """A bridge on a free port, keeping its state in `data_dir` (a new directory under `log_dir`
    by default, so that no test shares or leaves state)."""
    port = free_port()
    data_dir = data_dir or log_dir / f"bridge-data-{port}"
    bridge = start(
        f"bridge-{port}",
        [
            "bridge", "--http-host", "127.0.0.1", "--http-port", str(port), "--worker-address", worker_address,
            "--data-dir", str(data_dir), *extra,
        ],
        log_dir,
    )
    url = f"http://127.0.0.1:{port}"

    def listening() -> bool:
        return httpx.get(f"{url}/health", timeout=2).status_code in (200, 503)

    try:
        bridge.wait_until(listening, 60)
    except BaseException:
        bridge.stop()
        raise
    return url, bridge
