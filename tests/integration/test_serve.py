"""`tokenwire serve` as an operator runs it: one key for both processes, a worker that is killed
and restarted while the bridge answers 503, and SIGTERM draining requests in flight.

The tests share one stack and run in this order; the last one stops it.
"""
from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import httpx
import openai
import pytest

from tests.conftest import CACHE_DIR
from tests.prometheus import scrape
from tests.servers import ServerProcess, free_port, grpc_serving, start

from .conftest import CHAT_MODEL

KEY = "serve-key"
# Far more than the drain test's answers need on a busy machine: it must not hit it.
SHUTDOWN_GRACE_S = 120
RESTART_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Stack:
    process: ServerProcess
    url: str  # the bridge, e.g. http://127.0.0.1:PORT (no /v1)
    grpc_address: str
    worker_metrics_url: str

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=KEY, max_retries=0, timeout=120)

    def log(self) -> str:
        return self.process.log.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        """Every worker process it started, in order."""
        return [int(pid) for pid in re.findall(r"started the worker \(pid (\d+)\)", self.log())]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    flags = [
        "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port),
        "--api-key", KEY, "--cache-dir", str(CACHE_DIR), "--no-default-models", "--model", CHAT_MODEL,
        "--shutdown-grace", str(SHUTDOWN_GRACE_S), "--kv-cache-memory", "256MiB",  # a few short chats
    ]
    logs = tmp_path_factory.mktemp("serve")
    process = start("serve", ["serve", *flags, "--data-dir", str(logs / "data")], logs)
    try:
        process.wait_until(lambda: "tokenwire is ready" in process.log.read_text(), RESTART_TIMEOUT_S)
        yield Stack(process, f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}",
                    f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        process.stop()


def test_serve_prints_where_it_serves_and_passes_its_key_on(stack: Stack) -> None:
    banner = stack.log()
    assert f"Playground:      {stack.url}/\n" in banner
    assert f"{stack.url}/v1" in banner
    assert f"{stack.worker_metrics_url} (worker)" in banner
    assert httpx.get(f"{stack.url}/v1/models", timeout=10).status_code == 401
    assert httpx.get(f"{stack.url}/", timeout=10).status_code == 200  # the playground asks for the key
    # The one key opens the bridge, and the bridge passes it on to the worker.
    reply = stack.client().chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert reply.choices[0].message.content
    generated = scrape(stack.worker_metrics_url).value("tokenwire_engine_generated_tokens_total", model=CHAT_MODEL)
    assert generated == reply.usage.completion_tokens


def _poll_models(stack: Stack, until: int) -> list[httpx.Response]:
    """GET /v1/models until it answers `until`; every answer before, in order. A dropped
    connection raises: the bridge must answer all along."""
    answers: list[httpx.Response] = []
    deadline = time.monotonic() + RESTART_TIMEOUT_S
    headers = {"Authorization": f"Bearer {KEY}"}
    while not answers or answers[-1].status_code != until:
        assert time.monotonic() < deadline, f"no {until} within {RESTART_TIMEOUT_S:.0f} s"
        answers.append(httpx.get(f"{stack.url}/v1/models", headers=headers, timeout=30))
        time.sleep(0.2)
    return answers


def test_a_killed_worker_is_restarted_while_the_bridge_answers_503(stack: Stack) -> None:
    [pid] = stack.worker_pids()
    os.kill(pid, signal.SIGKILL)  # as the kernel's out-of-memory killer would
    down = _poll_models(stack, until=503)
    assert {answer.status_code for answer in down} <= {200, 503}  # 200: not seen dead yet
    while_down = _poll_models(stack, until=200)[:-1]
    assert while_down, "the worker was back before the bridge saw it down"
    for answer in while_down:
        assert answer.status_code == 503, answer.text
        assert int(answer.headers["retry-after"]) >= 1
        assert answer.json()["error"]["type"] == "server_error"
    reply = stack.client().chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert reply.choices[0].message.content
    log = stack.log()
    assert f"the worker (pid {pid}) was killed by SIGKILL after" in log
    assert "restarting the worker (restart 1)" in log
    assert len(stack.worker_pids()) == 2 and stack.process.process.poll() is None
    stack.process.wait_until(lambda: "tokenwire serves again" in stack.log(), 30)


def test_sigterm_drains_the_requests_in_flight(stack: Stack) -> None:
    client = stack.client()
    # Long enough to be seen running (a fraction of a second with tokenwire's kernels).
    tokens = 64
    options = dict(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=tokens,
        temperature=0, extra_body={"ignore_eos": True},
    )
    streamed: list[str] = []
    answers: list[openai.types.chat.ChatCompletion] = []

    def stream() -> None:
        for chunk in client.chat.completions.create(stream=True, **options):
            if chunk.choices and chunk.choices[0].finish_reason:
                streamed.append(chunk.choices[0].finish_reason)

    calls = [threading.Thread(target=stream), threading.Thread(target=lambda: answers.append(
        client.chat.completions.create(**options)))]
    for call in calls:
        call.start()
    # Both are in the worker's running batch before the signal.
    deadline = time.monotonic() + RESTART_TIMEOUT_S
    while scrape(stack.worker_metrics_url).value("tokenwire_engine_running_sequences") < 2:
        assert time.monotonic() < deadline and all(call.is_alive() for call in calls), "not both running"
        time.sleep(0.02)
    stack.process.process.send_signal(signal.SIGTERM)
    for call in calls:
        call.join(timeout=SHUTDOWN_GRACE_S)
    assert streamed == ["length"]
    [answer] = answers
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == tokens
    assert stack.process.process.wait(timeout=2 * SHUTDOWN_GRACE_S) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{stack.url}/health", timeout=2)
    with pytest.raises(grpc.RpcError):
        grpc_serving(stack.grpc_address)
