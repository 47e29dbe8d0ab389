"""Failover and drain as clients see them, on loopback without Docker.

A real Envoy runs deploy/envoy/envoy.yaml, with its workers' endpoint (`tokenwire-worker`)
replaced by two real workers (conftest.write_envoy_config makes the only substitutions). A real
bridge reaches them through Envoy.
Four clients call in a loop: REST through the bridge with the openai SDK and gRPC through Envoy,
each streamed and not. Then one worker is killed (SIGKILL), restarted, and the other one is
stopped (SIGTERM).

Each phase's figures (requests, failures, Envoy's retries, time to reroute) are printed at the end
of the run: RELIABILITY.md quotes them, and `make reliability` runs this file alone.
"""
from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import openai
import pytest

from tests.conftest import CACHE_DIR
from tests.servers import ServerProcess, start_bridge, start_workers
from tokenwire.v1 import generation_pb2, generation_pb2_grpc

from .conftest import Envoy, running_envoy

CHAT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
# Short answers of a fixed length keep the load light on 2 shared cores (each worker holds its own
# copy of the model) while every phase still has calls in flight.
MAX_TOKENS = 8
PROMPT = "Count from one to twenty."
# A drain lets calls in flight finish for this long: far more than they need here.
SHUTDOWN_GRACE_S = 60
# Enough for four short calls; the default (2 GiB) would double each worker's memory.
KV_CACHE = "256MiB"
CALL_TIMEOUT_S = 120.0
PHASE_TIMEOUT_S = 300.0
# Calls that must complete after an event before its phase ends.
CALLS_AFTER = 6


@dataclass(frozen=True)
class Outcome:
    kind: str  # rest-stream, rest, grpc-stream or grpc
    ended: float  # time.monotonic()
    error: str | None = None  # None: completed
    started: bool = False  # a failed stream had begun: the worker had taken the call
    clean: bool = True  # failed with a status or an error event: no dropped connection, no timeout


def _rest_call(client: openai.OpenAI, stream: bool) -> Outcome:
    kind = "rest-stream" if stream else "rest"
    started = False
    options = dict(
        model=CHAT_MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=MAX_TOKENS,
        temperature=0, extra_body={"ignore_eos": True},
    )
    try:
        if stream:
            tokens = 0
            for chunk in client.chat.completions.create(stream=True, **options):
                started = True  # the bridge answers 200 once the worker has taken the call
                tokens += bool(chunk.choices and chunk.choices[0].delta.content)
            assert tokens > 0
        else:
            reply = client.chat.completions.create(**options)
            assert reply.usage.completion_tokens == MAX_TOKENS
    except (openai.APIConnectionError, openai.APITimeoutError) as error:  # a dropped connection, a hang
        return Outcome(kind, time.monotonic(), repr(error), started, clean=False)
    except openai.APIError as error:  # an error status, or an error event in the stream
        return Outcome(kind, time.monotonic(), repr(error), started)
    return Outcome(kind, time.monotonic())


def _grpc_call(stub: generation_pb2_grpc.GenerationStub, stream: bool) -> Outcome:
    kind = "grpc-stream" if stream else "grpc"
    request = generation_pb2.GenerateRequest(
        model=CHAT_MODEL,
        chat=generation_pb2.ChatPrompt(messages=[generation_pb2.ChatMessage(role="user", content=PROMPT)]),
        sampling=generation_pb2.SamplingParams(temperature=0),
        stopping=generation_pb2.StoppingCriteria(max_new_tokens=MAX_TOKENS, ignore_eos=True),
    )
    started = False
    try:
        if stream:
            events = []
            for event in stub.GenerateStream(request, timeout=CALL_TIMEOUT_S):
                started = True  # the first event (PromptInfo) comes once the worker has taken the call
                events.append(event)
            assert events[-1].usage.completion_tokens == MAX_TOKENS
        else:
            assert stub.Generate(request, timeout=CALL_TIMEOUT_S).usage.completion_tokens == MAX_TOKENS
    except grpc.RpcError as error:
        clean = error.code() != grpc.StatusCode.DEADLINE_EXCEEDED
        return Outcome(kind, time.monotonic(), f"{error.code().name}: {error.details()}", started, clean)
    return Outcome(kind, time.monotonic())


class Load:
    """One client thread per kind of call, each calling in a loop until stopped."""

    def __init__(self, bridge_url: str, envoy: Envoy) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.outcomes: list[Outcome] = []
        rest = openai.OpenAI(base_url=f"{bridge_url}/v1", api_key="unused", max_retries=0, timeout=CALL_TIMEOUT_S)
        self._channel = grpc.insecure_channel(envoy.grpc_address)
        stub = generation_pb2_grpc.GenerationStub(self._channel)
        calls: list[Callable[[], Outcome]] = [
            lambda: _rest_call(rest, stream=True),
            lambda: _rest_call(rest, stream=False),
            lambda: _grpc_call(stub, stream=True),
            lambda: _grpc_call(stub, stream=False),
        ]
        self._threads = [threading.Thread(target=self._loop, args=(call,), daemon=True) for call in calls]

    def _loop(self, call: Callable[[], Outcome]) -> None:
        while not self._stop.is_set():
            outcome = call()
            with self._lock:
                self.outcomes.append(outcome)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=CALL_TIMEOUT_S + 10)
        self._channel.close()

    def ended_between(self, start: float, end: float = float("inf")) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if start <= o.ended < end]

    def wait_for_calls(self, count: int, since: float) -> None:
        wait_until(lambda: len(self.ended_between(since)) >= count, f"{count} calls ended")


def wait_until(condition: Callable[[], bool], what: str, timeout: float = PHASE_TIMEOUT_S) -> float:
    """Polls `condition` until it holds; returns when it did (time.monotonic())."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.02)
    return time.monotonic()


@dataclass
class Pool:
    """Two workers behind Envoy, and a bridge behind Envoy."""

    envoy: Envoy
    bridge_url: str
    workers: dict[str, ServerProcess]  # by address
    restart: Callable[[str], ServerProcess]  # a worker on the same address, once it serves

    def _host(self, address: str) -> dict[str, str]:
        return self.envoy.hosts().get(address, {})

    def served(self, address: str) -> int:
        """Calls Envoy has sent to the worker."""
        return int(self._host(address).get("rq_total", "0"))

    def in_flight(self, address: str) -> int:
        return int(self._host(address).get("rq_active", "0"))

    def in_rotation(self, address: str) -> bool:
        return self._host(address).get("health_flags") == "healthy"


@pytest.fixture(scope="module")
def pool(descriptor, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    logs = tmp_path_factory.mktemp("failover")
    flags = ["--cache-dir", str(CACHE_DIR), "--no-default-models", "--model", CHAT_MODEL,
             "--shutdown-grace", str(SHUTDOWN_GRACE_S), "--kv-cache-memory", KV_CACHE]
    processes: list[ServerProcess] = []

    def start(*ports: int | None) -> dict[str, ServerProcess]:
        workers = dict(start_workers(logs, *flags, ports=ports))
        processes.extend(workers.values())
        return workers

    try:
        workers = start(None, None)
        with running_envoy(logs, descriptor, list(workers)) as envoy:
            bridge_url, bridge = start_bridge(logs, envoy.grpc_address)
            processes.append(bridge)
            yield Pool(envoy, bridge_url, workers, lambda address: start(int(address.rsplit(":", 1)[1]))[address])
    finally:
        for process in processes:
            process.stop()


def _failures(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.error]


def test_failover_and_drain_lose_no_request(pool: Pool, reliability_figures: list[dict[str, str]]) -> None:
    first, second = pool.workers
    retries: dict[str, int] = {}
    load = Load(pool.bridge_url, pool.envoy)
    load.start()
    try:
        began = wait_until(lambda: pool.served(first) > 0 and pool.served(second) > 0, "both workers serve")

        # SIGKILL, while the first worker has calls in flight.
        wait_until(lambda: pool.in_flight(first) >= 1, "calls in flight on the first worker")
        retries["killed"] = pool.envoy.counter("upstream_rq_retry")
        killed = time.monotonic()
        pool.workers[first].process.send_signal(signal.SIGKILL)
        rerouted = wait_until(lambda: not pool.in_rotation(first), "Envoy takes the killed worker out")
        served_when_out = pool.served(first)
        load.wait_for_calls(CALLS_AFTER, since=rerouted)
        assert pool.served(first) == served_when_out, "calls still reached the killed worker"

        # It comes back on its address, and Envoy sends it calls again.
        retries["restarted"] = pool.envoy.counter("upstream_rq_retry")
        restarted = time.monotonic()
        pool.workers[first] = pool.restart(first)
        serving = time.monotonic()
        back = wait_until(lambda: pool.in_rotation(first), "Envoy puts the restarted worker back in rotation")
        wait_until(lambda: pool.served(first) > served_when_out, "the restarted worker gets calls")

        # SIGTERM on the other worker, while it has calls in flight: it drains.
        wait_until(lambda: pool.in_flight(second) >= 1, "calls in flight on the second worker")
        retries["terminated"] = pool.envoy.counter("upstream_rq_retry")
        terminated = time.monotonic()
        pool.workers[second].process.send_signal(signal.SIGTERM)
        assert pool.workers[second].process.wait(timeout=SHUTDOWN_GRACE_S + 30) == 0
        exited = time.monotonic()
        load.wait_for_calls(CALLS_AFTER, since=exited)
    finally:
        load.stop()
    retries["end"] = pool.envoy.counter("upstream_rq_retry")

    assert not _failures(load.ended_between(began, killed))
    kill_phase = load.ended_between(killed, restarted)
    unclean = [o for o in _failures(kill_phase) if not (o.started and o.clean)]
    assert not unclean, f"calls failed that had not begun on the killed worker, or not cleanly: {unclean}"
    rejoin_phase = load.ended_between(restarted, terminated)
    assert not _failures(rejoin_phase)
    drain_phase = load.ended_between(terminated)
    assert not _failures(drain_phase), "a call failed while a worker drained"

    def record(phase: str, outcomes: list[Outcome], retried: int, note: str) -> None:
        reliability_figures.append({
            "phase": phase,
            "requests": str(len(outcomes)),
            "streamed": str(sum(o.kind.endswith("stream") for o in outcomes)),
            "failed": str(len(_failures(outcomes))),
            "retried by Envoy": str(retried),
            "timing": note,
        })

    record("SIGKILL one of two workers", kill_phase, retries["restarted"] - retries["killed"],
           f"out of rotation {rerouted - killed:.2f} s after the kill")
    record("restart it", rejoin_phase, retries["terminated"] - retries["restarted"],
           f"serving {serving - restarted:.0f} s after its start, back in rotation {back - serving:.1f} s later")
    record("SIGTERM the other", drain_phase, retries["end"] - retries["terminated"],
           f"drained and exited {exited - terminated:.1f} s after the signal")
