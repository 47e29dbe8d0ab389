"""The batch runner in front of the fake worker: lines at batch priority, overload retried rather
than failed, and a runner stopped midway resumed by the next one with every line kept once."""
from __future__ import annotations

import asyncio
import json
import pathlib
import time

import pytest

from rest_bridge.batches.endpoints import BATCH_PRIORITY
from rest_bridge.batches.objects import file_object, new_batch
from rest_bridge.batches.runner import BatchRunner
from rest_bridge.store import open_store
from rest_bridge.upstream import Upstreams
from tests.unit.rest_bridge.fake_worker import FakeWorker


@pytest.fixture
def store(tmp_path: pathlib.Path):
    opened = open_store(tmp_path)
    yield opened
    opened.close()


@pytest.fixture
async def upstream(fake_worker: FakeWorker):
    pool = Upstreams(fake_worker.address, timeout=10)
    yield pool
    await pool.close()


def _add_batch(store, prompts: list[str], endpoint: str = "/v1/chat/completions") -> str:
    lines = [
        {
            "custom_id": f"c{i}",
            "method": "POST",
            "url": endpoint,
            "body": {"model": "m", "messages": [{"role": "user", "content": p}], "priority": -5},
        }
        for i, p in enumerate(prompts)
    ]
    file = file_object("in.jsonl", 0, "batch", int(time.time()))
    store.add_file(file, "\n".join(json.dumps(line) for line in lines).encode())
    batch = new_batch(file["id"], endpoint, None, int(time.time()))
    store.add_batch(batch)
    return batch["id"]


async def _until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def _outputs(store, batch: dict) -> list[dict]:
    return [json.loads(line) for line in store.file_content(batch["output_file_id"]).splitlines()]


async def test_lines_run_at_batch_priority_and_overload_is_retried(store, upstream, fake_worker):
    fake_worker.generation.capacity = 1  # every call beyond one in flight is refused (429)
    fake_worker.generation.latency_s = 0.05
    batch_id = _add_batch(store, [f"q{i}" for i in range(5)])
    runner = BatchRunner(store, upstream, concurrency=4)
    runner.run(batch_id)
    await _until(lambda: store.get_batch(batch_id)["status"] == "completed")
    await runner.close()
    batch = store.get_batch(batch_id)
    assert batch["request_counts"] == {"total": 5, "completed": 5, "failed": 0} and batch["error_file_id"] is None
    outputs = _outputs(store, batch)
    assert [line["custom_id"] for line in outputs] == [f"c{i}" for i in range(5)]
    assert [line["response"]["body"]["choices"][0]["message"]["content"] for line in outputs] == [
        f"echo: q{i}" for i in range(5)
    ]
    # Refused calls were tried again; every call carried the batch's priority, whatever the line said.
    assert len(fake_worker.record.requests) > 5
    assert {request.priority for request in fake_worker.record.requests} == {BATCH_PRIORITY}


async def test_a_stopped_runner_is_resumed_with_every_line_once(store, upstream, fake_worker):
    fake_worker.generation.latency_s = 0.1
    batch_id = _add_batch(store, [f"q{i}" for i in range(8)])
    first = BatchRunner(store, upstream, concurrency=2)
    first.run(batch_id)
    await _until(lambda: store.result_counts(batch_id)[0] >= 3)
    await first.close()  # as at a shutdown: the lines in flight are dropped, their results never kept
    kept = {result.record["custom_id"]: result.record["id"] for result in store.results(batch_id)}
    assert 3 <= len(kept) < 8 and store.get_batch(batch_id)["status"] == "in_progress"

    second = BatchRunner(store, upstream, concurrency=2)
    await second.start()
    await _until(lambda: store.get_batch(batch_id)["status"] == "completed")
    await second.close()
    outputs = _outputs(store, store.get_batch(batch_id))
    assert sorted(line["custom_id"] for line in outputs) == sorted(f"c{i}" for i in range(8))
    # The lines finished before the stop kept their results: they were not run again.
    assert all(
        {line["custom_id"]: line["id"] for line in outputs}[custom_id] == line_id for custom_id, line_id in kept.items()
    )
