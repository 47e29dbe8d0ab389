"""The processes as an operator runs them: a worker loading its models, and a worker draining on
SIGTERM (`tokenwire serve`: test_serve.py)."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading

import grpc
import httpx
import pytest

from tests.conftest import CACHE_DIR
from tests.rich_status import reason
from tests.servers import WORKER_START_TIMEOUT_S, free_port, grpc_serving, start, start_bridge, start_worker
from tokenwire.stubs import WorkerStubs
from tokenwire.v1 import generation_pb2, models_pb2

from .conftest import CHAT_MODEL


def _chat_worker(tmp_path, shutdown_grace_s: int):
    return start_worker(
        tmp_path, "--cache-dir", str(CACHE_DIR), "--no-default-models", "--model", CHAT_MODEL,
        "--shutdown-grace", str(shutdown_grace_s),
    )


def _sigterm_while_streaming(worker, stub, request, metadata=()) -> tuple[grpc.Call, list]:
    """Starts a GenerateStream, sends the worker SIGTERM once it has begun, and returns the call and
    every event it gave until it ended."""
    stream = stub.GenerateStream(request, metadata=list(metadata))
    assert next(stream).HasField("prompt_info")
    events: list = []
    reader = threading.Thread(target=lambda: events.extend(stream))
    reader.start()
    worker.process.send_signal(signal.SIGTERM)
    reader.join(timeout=600)  # returns when the stream ends
    return stream, events


def test_sigterm_lets_in_flight_streams_finish(tmp_path):
    # A grace period far longer than the stream needs, however slow the machine: the worker exits
    # as soon as the stream has ended.
    address, worker = _chat_worker(tmp_path, shutdown_grace_s=600)
    try:
        request = generation_pb2.GenerateRequest(
            text="Write a long story.",
            sampling=generation_pb2.SamplingParams(temperature=0),
            stopping=generation_pb2.StoppingCriteria(max_new_tokens=150, ignore_eos=True),
        )
        with grpc.insecure_channel(address) as channel:
            _, events = _sigterm_while_streaming(worker, WorkerStubs.on(channel).generation, request)
        assert events[-1].HasField("usage") and events[-1].usage.completion_tokens == 150
        assert worker.process.wait(timeout=60) == 0
    finally:
        worker.stop()


def test_sigterm_after_the_grace_period_aborts_streams_that_still_end_ok(tmp_path):
    address, worker = _chat_worker(tmp_path, shutdown_grace_s=1)
    try:
        request = generation_pb2.GenerateRequest(
            text="Write a long story.",
            stopping=generation_pb2.StoppingCriteria(max_new_tokens=3000, ignore_eos=True),
            response=generation_pb2.ResponseOptions(token_ids=True),
        )
        with grpc.insecure_channel(address) as channel:
            stub = WorkerStubs.on(channel).generation
            unary = stub.Generate.future(request)  # sent first: in flight once the stream has begun
            stream, events = _sigterm_while_streaming(worker, stub, request, metadata=[("x-request-id", "long-1")])
            assert stream.code() == grpc.StatusCode.OK
            assert dict(stream.trailing_metadata())["x-request-id"] == "long-1"
            [*deltas, last] = events
            assert last.HasField("usage") and {e.WhichOneof("event") for e in deltas} == {"delta"}
            assert deltas[-1].delta.finish.reason == generation_pb2.FINISH_REASON_ABORTED
            assert 0 < last.usage.completion_tokens == sum(len(e.delta.token_ids) for e in deltas) < 3000
            response = unary.result(timeout=60)
            assert response.sequences[0].finish.reason == generation_pb2.FINISH_REASON_ABORTED
            assert response.usage.completion_tokens == len(response.sequences[0].token_ids) > 0
        assert worker.process.wait(timeout=60) == 0
    finally:
        worker.stop()


@pytest.mark.parametrize(
    ("command", "flags", "line"),
    [
        ("worker", ["--price", "foo/bar=1,2"], "tokenwire worker: --price foo/bar=1,2: foo/bar is not served here"),
        ("serve", ["--model", "/nowhere/model.gguf"],
         "tokenwire worker: --model /nowhere/model.gguf: /nowhere/model.gguf does not exist"),
    ],
    ids=["worker-price", "serve-model-path"],
)
def test_flags_that_need_no_model_are_checked_before_loading(command, flags, line):
    """One line and a non-zero status; tests/unit/test_startup.py goes through every kind of
    start-up error in process."""
    ports = ["--grpc-port", str(free_port())] + (["--http-port", str(free_port())] if command == "serve" else [])
    result = subprocess.run(
        [sys.executable, "-m", "tokenwire.cli", command, *ports, *flags], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert result.stderr.splitlines() == [line] and not result.stdout


def test_a_model_that_cannot_be_loaded_is_one_line(tmp_path):
    # Weights by their name (an empty directory is refused before loading: tests/unit/test_startup.py).
    not_a_model = tmp_path / "corrupt"
    not_a_model.mkdir()
    (not_a_model / "model.safetensors").write_bytes(b"not safetensors")
    spec = f"acme/corrupt={not_a_model}"
    result = subprocess.run(
        [sys.executable, "-m", "tokenwire.cli", "worker", "--grpc-port", str(free_port()), "--cache-dir", str(CACHE_DIR),
         "--no-default-models", "--model", spec],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"tokenwire worker: --model {spec}: cannot load it: ")


def test_metadata_calls_while_the_worker_loads_and_when_it_freezes(tmp_path):
    """A client that lists the models at start-up must not conclude that its model does not exist:
    the models are UNAVAILABLE (503) while loading. Later, a frozen worker fails the bridge's
    metadata calls after the metadata deadline (half a second here), not the request timeout."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    bridge_url, bridge = start_bridge(tmp_path, address, "--metadata-timeout", "0.5")
    flags = ["--grpc-port", str(port), "--cache-dir", str(CACHE_DIR), "--no-default-models", "--model", CHAT_MODEL]
    worker = start("worker", ["worker", *flags], tmp_path)
    try:
        worker.wait_until(lambda: not grpc_serving(address), 60)  # listening, still loading
        with grpc.insecure_channel(address) as channel:
            models = WorkerStubs.on(channel).models
            for call in (
                lambda: models.ListModels(models_pb2.ListModelsRequest()),
                lambda: models.GetModel(models_pb2.GetModelRequest(id=CHAT_MODEL)),
            ):
                with pytest.raises(grpc.RpcError) as caught:
                    call()
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and reason(caught.value) == "NOT_READY"
            assert httpx.get(f"{bridge_url}/v1/models", timeout=10).status_code == 503
            assert not grpc_serving(address)  # all of the above happened while loading
            worker.wait_until(lambda: grpc_serving(address), WORKER_START_TIMEOUT_S)
            assert CHAT_MODEL in {m.id for m in models.ListModels(models_pb2.ListModelsRequest()).models}
        assert httpx.get(f"{bridge_url}/v1/models", timeout=10).status_code == 200
        worker.process.send_signal(signal.SIGSTOP)
        try:
            for path in ("/v1/models", "/health"):
                response = httpx.get(f"{bridge_url}{path}", timeout=60)
                assert response.status_code == 504 and response.json()["error"]["type"] == "timeout"
        finally:
            worker.process.send_signal(signal.SIGCONT)
        assert httpx.get(f"{bridge_url}/v1/models", timeout=10).status_code == 200
    finally:
        worker.stop()
        bridge.stop()
