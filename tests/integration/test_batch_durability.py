"""A batch survives its stack: the bridge killed mid-batch (no clean shutdown), the worker stopped,
both started again (the bridge first, while the worker is still down). The batch resumes by
itself, and every custom_id is answered exactly once."""
from __future__ import annotations

import openai

from tests.conftest import CACHE_DIR
from tests.servers import free_port, start_bridge, start_worker

from .batching import chat_line, results, start, wait_for, wait_until
from .conftest import CHAT_MODEL

WORKER_FLAGS = ("--cache-dir", str(CACHE_DIR), "--no-default-models", "--model", CHAT_MODEL)


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_the_whole_stack_restarted_mid_batch_answers_every_line_once(tmp_path):
    data_dir, worker_port = tmp_path / "data", free_port()
    address, worker = start_worker(tmp_path, *WORKER_FLAGS, port=worker_port)
    url, bridge = start_bridge(tmp_path, address, data_dir=data_dir)
    try:
        client = _client(url)
        lines = [
            chat_line(f"d{i}", f"Tell a story about the number {i}.", max_tokens=6, ignore_eos=True) for i in range(16)
        ]
        batch = start(client, lines)
        before = wait_until(client, batch.id, lambda batch: batch.request_counts.completed >= 2)
        bridge.process.kill()  # lines in flight die with it; their results were never kept
        bridge.process.wait()
        worker.stop()
        assert before.status == "in_progress" and before.request_counts.completed < 16

        # The bridge first: it resumes the batch, and waits for the worker (503s are tried again).
        url, bridge = start_bridge(tmp_path, address, data_dir=data_dir)
        _, worker = start_worker(tmp_path, *WORKER_FLAGS, port=worker_port)
        client = _client(url)
        finished = wait_for(client, batch.id)
        outputs, errors = results(client, finished)
    finally:
        bridge.stop()
        worker.stop()
    assert finished.status == "completed" and finished.in_progress_at == before.in_progress_at
    assert (finished.request_counts.total, finished.request_counts.completed, finished.request_counts.failed) == (
        16,
        16,
        0,
    )
    assert not errors and sorted(line["custom_id"] for line in outputs) == sorted(line["custom_id"] for line in lines)
    # Whole answers only: none cut short by the worker's shutdown.
    assert all(line["response"]["body"]["usage"]["completion_tokens"] == 6 for line in outputs)
