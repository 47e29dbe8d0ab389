"""Helpers of the Batch API tests: input files, waiting for a batch, reading its results."""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Container

import openai
from openai.types import Batch

from .conftest import CHAT_MODEL

FINAL_STATUSES = ("completed", "failed", "cancelled", "expired")


def chat_line(custom_id: str, content: str, max_tokens: int = 6, **body: object) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": CHAT_MODEL,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "temperature": 0,
            **body,
        },
    }


def upload(client: openai.OpenAI, lines: list[dict], name: str = "input.jsonl") -> str:
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    return client.files.create(file=(name, content), purpose="batch").id


def start(client: openai.OpenAI, lines: list[dict], endpoint: str = "/v1/chat/completions") -> Batch:
    return client.batches.create(input_file_id=upload(client, lines), endpoint=endpoint, completion_window="24h")


def wait_until(client: openai.OpenAI, batch_id: str, done: Callable[[Batch], bool], timeout: float = 600) -> Batch:
    """The batch once `done(batch)`, polled until a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if done(batch):
            return batch
        assert time.monotonic() < deadline, f"batch {batch_id} not done after {timeout} s: {batch}"
        time.sleep(0.1)


def wait_for(
    client: openai.OpenAI, batch_id: str, statuses: Container[str] = FINAL_STATUSES, timeout: float = 600
) -> Batch:
    return wait_until(client, batch_id, lambda batch: batch.status in statuses, timeout)


def records(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    """The lines of an output or error file (none without a file)."""
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def results(client: openai.OpenAI, batch: Batch) -> tuple[list[dict], list[dict]]:
    """(output lines, error lines) of a finished batch."""
    return records(client, batch.output_file_id), records(client, batch.error_file_id)
