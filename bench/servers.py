"""Server processes under test: how tokenwire and each peer is launched, awaited and stopped.

Every server runs in its own session (process group), so stopping it also stops whatever it
spawned (tokenwire's worker and bridge, uvicorn workers). Use `launch()` as a context manager:
the group is terminated, then killed, whatever happens inside.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import psutil

from bench.models import GENERATION_MODEL_ID, ModelFiles

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent
# tokenwire converts the GGUF file on its very first start (about a minute on 2 cores).
START_TIMEOUT_S = 600.0

TOKENWIRE = "tokenwire"
LLAMA_CPP = "llama-cpp"
TRANSFORMERS = "transformers"
SERVER_NAMES = (TOKENWIRE, LLAMA_CPP, TRANSFORMERS)
LABELS = {
    TOKENWIRE: "tokenwire (REST bridge)",
    LLAMA_CPP: "llama-cpp-python server",
    TRANSFORMERS: "transformers serve --continuous-batching",
}


@dataclass(frozen=True)
class ServerSpec:
    """One server to launch: its command line and how to tell it is ready."""

    name: str
    command: list[str]
    # Base URL of the OpenAI API, ending in /v1.
    base_url: str
    # A GET on this URL answers 200 once the server can take requests.
    ready_url: str
    # The `model` field clients send.
    model: str
    # tokenwire's worker metrics (Prometheus text), where the server has them.
    metrics_url: str | None = None

    @property
    def label(self) -> str:
        return LABELS[self.name]

    def command_line(self) -> str:
        """The command as a user would type it (paths relative to the repository where possible)."""
        return " ".join(shown(part) for part in self.command)


@dataclass
class RunningServer:
    spec: ServerSpec
    process: subprocess.Popen[bytes]
    log: pathlib.Path

    @property
    def pid(self) -> int:
        return self.process.pid


def shown(part: str) -> str:
    """A path as printed in the report: relative to the repository, or under ~."""
    home = str(pathlib.Path.home())
    for prefix, replacement in ((str(ROOT) + "/", ""), (home, "~")):
        if part.startswith(prefix):
            return replacement + part[len(prefix):]
    return part


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def missing_reason(name: str) -> str | None:
    """Why `name` cannot run here (a package not installed), or None when it can."""
    if name == LLAMA_CPP and importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python[server] is not installed"
    if name == TRANSFORMERS:
        if shutil.which("transformers", path=str(BIN)) is None:
            return "the transformers CLI is not installed"
        for module in ("fastapi", "uvicorn", "openai"):
            if importlib.util.find_spec(module) is None:
                return f"transformers[serving] is not installed ({module} missing)"
    if name == TOKENWIRE and importlib.util.find_spec("uvicorn") is None:
        return "tokenwire's REST bridge needs uvicorn (pip install -e .)"
    return None


def spec_for(name: str, models: ModelFiles, device: str, cache_dir: pathlib.Path) -> ServerSpec:
    """The launch spec of server `name` on a fresh port, serving the default model (tokenwire
    keeps its converted weights in `cache_dir`)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    if name == TOKENWIRE:
        metrics_port = free_port()
        command = [str(BIN / "tokenwire"), "serve", "--http-port", str(port), "--grpc-port", str(free_port()),
                   "--metrics-port", str(metrics_port), "--device", device, "--cache-dir", str(cache_dir)]
        return ServerSpec(name, command, f"{base}/v1", f"{base}/health", GENERATION_MODEL_ID,
                          f"http://127.0.0.1:{metrics_port}/metrics")
    if name == LLAMA_CPP:
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(models.gguf),
                   "--model_alias", GENERATION_MODEL_ID, "--interrupt_requests", "False",
                   "--host", "127.0.0.1", "--port", str(port)]
        if device.startswith("cuda"):
            command += ["--n_gpu_layers", "-1"]
        return ServerSpec(name, command, f"{base}/v1", f"{base}/v1/models", GENERATION_MODEL_ID)
    if name == TRANSFORMERS:
        command = [str(BIN / "transformers"), "serve", str(models.hf_dir), "--continuous-batching",
                   "--device", device, "--host", "127.0.0.1", "--port", str(port)]
        return ServerSpec(name, command, f"{base}/v1", f"{base}/health", str(models.hf_dir))
    raise ValueError(f"unknown server {name!r}; choose from {', '.join(SERVER_NAMES)}")


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(server: RunningServer) -> None:
    """SIGTERM to the server's whole process group, SIGKILL to what is left after 20 s."""
    try:
        leader = psutil.Process(server.pid)
        processes = [leader, *leader.children(recursive=True)]
    except psutil.NoSuchProcess:
        processes = []
    for sig, wait_s in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            break
        _, alive = psutil.wait_procs(processes, timeout=wait_s)
        if not alive:
            break
    server.process.wait()


def stop_servers_on_sigterm() -> None:
    """A SIGTERM unwinds like Ctrl-C, so every launched server is stopped on the way out."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def launch(spec: ServerSpec, log_dir: pathlib.Path) -> Iterator[RunningServer]:
    """Starts `spec`, waits until it answers, yields it, and always stops its process group."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{spec.name}.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:
        process = subprocess.Popen(spec.command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = RunningServer(spec, process, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _ready(spec.ready_url):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{spec.label} did not start (exit code {process.poll()}); log {log}:\n{tail}")
            time.sleep(0.5)
        yield server
    finally:
        _stop(server)
