"""Priority over gRPC: the worker admits waiting requests lowest priority value first, then by
arrival (the same `priority` as vLLM's; the Batch API's lines run at the lowest)."""
from __future__ import annotations

import grpc
import pytest

from tests.conftest import CACHE_DIR
from tests.servers import start_worker
from tokenwire.v1 import generation_pb2, generation_pb2_grpc

from .conftest import CHAT_MODEL


@pytest.fixture(scope="module")
def one_at_a_time(tmp_path_factory):
    """A worker that runs one sequence at a time: requests wait in its queue, and run in the order
    it admits them."""
    address, worker = start_worker(
        tmp_path_factory.mktemp("priority"),
        "--cache-dir",
        str(CACHE_DIR),
        "--no-default-models",
        "--model",
        CHAT_MODEL,
        "--max-running",
        "1",
    )
    yield address
    worker.stop()


def _request(max_new_tokens: int, priority: int | None = None) -> generation_pb2.GenerateRequest:
    request = generation_pb2.GenerateRequest(
        text="Once upon a time",
        sampling=generation_pb2.SamplingParams(temperature=0),
        stopping=generation_pb2.StoppingCriteria(max_new_tokens=max_new_tokens, ignore_eos=True),
    )
    if priority is not None:
        request.priority = priority
    return request


def test_waiting_requests_are_admitted_by_priority_then_arrival(one_at_a_time):
    with grpc.insecure_channel(one_at_a_time) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        blocker = stub.GenerateStream(_request(1000))
        assert next(blocker).HasField("prompt_info") and next(blocker).HasField("delta")  # it holds the one slot
        # Sent in this order, each queued in the engine once its PromptInfo comes: the highest
        # priority (lowest value) last.
        waiting = {}
        for name, priority in (("low-1", 10), ("low-2", 10), ("default", None), ("high", -3)):
            waiting[name] = stub.GenerateStream(_request(6, priority))
            assert next(waiting[name]).HasField("prompt_info")
        blocker.cancel()
        steps = {}
        for name, call in waiting.items():
            assert list(call)[-1].usage.completion_tokens == 6
            steps[name] = int(dict(call.trailing_metadata())["x-steps-to-first-token"])
    # Steps from its submission to its first token: each ran whole before the next was admitted,
    # and each was sent after those before it, so admitted first means fewer steps.
    assert steps["high"] < steps["default"] < min(steps["low-1"], steps["low-2"]), steps
