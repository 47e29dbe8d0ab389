"""Capacity: a client that goes away frees the worker; a full queue answers 429; a request with
more prompts than the queue holds still succeeds; the worker's metrics show the queue and the
running batch.

These use their own worker with room for one running and one waiting request, so that
"the slot is free again" and "the queue is full" are observable from outside.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import CACHE_DIR
from tests.prometheus import scrape
from tests.servers import free_port, start_bridge, start_worker

from .conftest import CHAT_MODEL

MODEL = {"model": CHAT_MODEL}
STORY = [{"role": "user", "content": "Tell me a very long story."}]
LONG = {"model": CHAT_MODEL, "messages": STORY, "max_tokens": 4000, "ignore_eos": True, "stream": True}


@pytest.fixture(scope="module")
def tight(tmp_path_factory) -> Iterator[tuple[str, str]]:
    """(bridge URL, worker metrics URL)."""
    logs = tmp_path_factory.mktemp("tight")
    metrics_port = free_port()
    address, worker = start_worker(
        logs, "--cache-dir", str(CACHE_DIR), "--no-default-models", "--model", CHAT_MODEL,
        "--max-running", "1", "--max-waiting", "1", "--metrics-port", str(metrics_port),
    )
    url, bridge = start_bridge(logs, address)
    yield url, f"http://127.0.0.1:{metrics_port}/metrics"
    bridge.stop()
    worker.stop()


@pytest.fixture(scope="module")
def tight_url(tight) -> str:
    return tight[0]


def _first_line(lines: Iterator[str]) -> str:
    """The first non-empty line. Takes the caller's iterator: dropping an httpx line iterator
    closes its response."""
    return next(line for line in lines if line)


def test_disconnected_stream_frees_the_only_slot(tight_url):
    with httpx.Client(base_url=tight_url, timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", json=LONG) as response:
            assert response.status_code == 200 and _first_line(response.iter_lines()).startswith("data: ")
        # The stream above would run for 4000 tokens (over a minute). Its slot must be free now:
        # with room for one sequence, this request can only finish once the other is gone.
        client = openai.OpenAI(base_url=f"{tight_url}/v1", api_key="x", max_retries=0, timeout=30)
        reply = client.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert reply.choices[0].finish_reason in ("stop", "length")


async def _queued(http: httpx.AsyncClient) -> asyncio.Task[int]:
    """A streaming request that waits in the queue: its response starts once the worker runs it
    (the bridge answers when the request joins the running batch). Cancel the task to leave."""

    async def wait() -> int:
        async with http.stream("POST", "/v1/chat/completions", json=LONG) as response:
            return response.status_code

    return asyncio.create_task(wait())


async def test_full_queue_is_429_with_retry_after(tight):
    url, metrics_url = tight
    await asyncio.to_thread(_eventually, metrics_url, (0, 0))
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        async with http.stream("POST", "/v1/chat/completions", json=LONG) as running:
            lines = running.aiter_lines()
            assert running.status_code == 200 and await anext(lines)
            waiting = await _queued(http)
            await asyncio.to_thread(_eventually, metrics_url, (1, 1))
            rejected = await http.post("/v1/chat/completions", json={**LONG, "stream": False})
            waiting.cancel()
    assert rejected.status_code == 429
    assert int(rejected.headers["retry-after"]) >= 1
    error = rejected.json()["error"]
    assert error["code"] == "queue_full" and error["message"]


def _aborted(metrics_url: str) -> float:
    return scrape(metrics_url).value("tokenwire_engine_sequences_finished_total", finish_reason="aborted", **MODEL)


def _gauges(metrics_url: str) -> tuple[float, float]:
    """(waiting requests, running sequences)."""
    now = scrape(metrics_url)
    return now.value("tokenwire_engine_waiting_requests", **MODEL), now.value(
        "tokenwire_engine_running_sequences", **MODEL
    )


def _eventually(metrics_url: str, expected: tuple[float, float]) -> None:
    deadline = time.monotonic() + 20
    while _gauges(metrics_url) != expected:
        assert time.monotonic() < deadline, f"(waiting, running) stayed {_gauges(metrics_url)}, not {expected}"
        time.sleep(0.1)


@pytest.mark.parametrize("stream", [False, True])
def test_more_prompts_than_the_queue_holds_all_succeed(tight, stream):
    url, metrics_url = tight
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)
    prompts = [f"Count from {i}:" for i in range(5)]
    args = dict(model=CHAT_MODEL, max_tokens=3, temperature=0)
    # Streams of earlier tests may still be ending.
    _eventually(metrics_url, (0, 0))
    singles = [client.completions.create(prompt=p, **args).choices[0].text for p in prompts]
    aborted_before = _aborted(metrics_url)
    if stream:
        texts = [""] * len(prompts)
        for chunk in client.completions.create(prompt=prompts, stream=True, **args):
            for choice in chunk.choices:
                texts[choice.index] += choice.text
    else:
        reply = client.completions.create(prompt=prompts, **args)
        assert [c.index for c in reply.choices] == list(range(len(prompts)))
        texts = [c.text for c in reply.choices]
    assert texts == singles
    # Prompts the worker had no room for were refused, never admitted only to be aborted.
    assert _aborted(metrics_url) == aborted_before


async def test_metrics_show_the_queue_and_the_running_batch(tight):
    url, metrics_url = tight
    await asyncio.to_thread(_eventually, metrics_url, (0, 0))
    aborted_before = _aborted(metrics_url)
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        async with http.stream("POST", "/v1/chat/completions", json=LONG) as running:
            lines = running.aiter_lines()  # kept: dropping the iterator would close the response
            assert await anext(lines)
            await asyncio.to_thread(_eventually, metrics_url, (0, 1))
            waiting = await _queued(http)
            await asyncio.to_thread(_eventually, metrics_url, (1, 1))
            waiting.cancel()  # a client that gives up while queued leaves the queue
            await asyncio.to_thread(_eventually, metrics_url, (0, 1))
    await asyncio.to_thread(_eventually, metrics_url, (0, 0))
    assert _aborted(metrics_url) - aborted_before == 2
