"""Priority over gRPC: the worker serves lower `priority` values first (vLLM's `priority`; the
Batch API's lines run at the lowest). Asserted in engine steps, which no machine's speed changes."""
from __future__ import annotations

import grpc
import pytest

from tests.conftest import CACHE_DIR
from tests.servers import start_worker
from tokenwire.v1 import generation_pb2, generation_pb2_grpc

from .conftest import CHAT_MODEL


@pytest.fixture(scope="module")
def one_at_a_time(tmp_path_factory):
    """A worker that runs one sequence at a time: any other request must wait for it, or take its
    place."""
    address, worker = start_worker(
        tmp_path_factory.mktemp("priority"),
        *("--cache-dir", str(CACHE_DIR), "--no-default-models", "--model", CHAT_MODEL, "--max-running", "1"),
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


def _steps_to_first_token(call: grpc.Call) -> int:
    assert list(call)[-1].HasField("usage")
    return int(dict(call.trailing_metadata())["x-steps-to-first-token"])


def test_a_more_urgent_request_goes_first_and_an_equal_one_waits(one_at_a_time):
    with grpc.insecure_channel(one_at_a_time) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        idle = _steps_to_first_token(stub.GenerateStream(_request(4, priority=5)))
        running = stub.GenerateStream(_request(1000, priority=5))
        assert next(running).HasField("prompt_info") and next(running).HasField("delta")  # it holds the one place
        equal = stub.GenerateStream(_request(4, priority=5))  # waits behind it
        urgent = _steps_to_first_token(stub.GenerateStream(_request(4, priority=-1)))
        running.cancel()  # only now can the equal request run
        waited = _steps_to_first_token(equal)
    # The urgent request took the running one's place at once, as fast as on an idle worker; the
    # equal one waited at least as long as the urgent one ran.
    assert urgent <= idle + 2, (idle, urgent)
    assert waited >= urgent + 4, (urgent, waited)
