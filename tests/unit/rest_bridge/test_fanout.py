"""Requests with many prompts, in front of the fake worker: a bounded number of calls in flight,
every choice in its place, and a queue shorter than the list is no reason to refuse it."""
from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from rest_bridge.fanout import MAX_CALLS_IN_FLIGHT
from tokenwire.limits import MAX_INPUTS
from tests.unit.rest_bridge.fake_worker import FakeWorker

PROMPTS = [f"p{i}" for i in range(40)]


def choice_texts(response: httpx.Response) -> dict[int, str]:
    """Choice index → text, from a JSON answer or from an event stream (which must end well)."""
    assert response.status_code == 200, response.text
    if not response.headers["content-type"].startswith("text/event-stream"):
        choices = response.json()["choices"]
        assert [c["index"] for c in choices] == list(range(len(choices)))
        return {c["index"]: c["text"] for c in choices}
    events = response.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    texts: dict[int, str] = {}
    for event in events[:-2]:
        (choice,) = json.loads(event.removeprefix("data: "))["choices"]
        texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
    return texts


def completions(prompts: list[str], stream: bool, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "prompt": prompts, "stream": stream, **extra}


@pytest.mark.parametrize("stream", [False, True])
async def test_one_request_keeps_a_bounded_number_of_calls_in_flight(
    client: httpx.AsyncClient, fake_worker: FakeWorker, stream: bool
) -> None:
    fake_worker.generation.latency_s = 0.01
    response = await client.post("/v1/completions", json=completions(PROMPTS, stream, n=2))
    assert choice_texts(response) == {i: f"echo: p{i // 2}" for i in range(2 * len(PROMPTS))}
    assert 1 < fake_worker.record.most_open <= MAX_CALLS_IN_FLIGHT
    assert len(fake_worker.record.requests) == len(PROMPTS)


@pytest.mark.parametrize("stream", [False, True])
async def test_more_prompts_than_the_worker_has_room_for_still_succeed(
    client: httpx.AsyncClient, fake_worker: FakeWorker, stream: bool
) -> None:
    fake_worker.generation.capacity, fake_worker.generation.latency_s = 3, 0.01
    response = await client.post("/v1/completions", json=completions(PROMPTS, stream, n=2))
    assert choice_texts(response) == {i: f"echo: p{i // 2}" for i in range(2 * len(PROMPTS))}
    assert fake_worker.record.most_open == 3


@pytest.mark.parametrize("stream", [False, True])
async def test_no_room_while_the_request_has_no_call_in_flight_is_a_429(
    client: httpx.AsyncClient, fake_worker: FakeWorker, stream: bool
) -> None:
    fake_worker.generation.capacity = 0
    response = await client.post("/v1/completions", json=completions(PROMPTS, stream))
    assert response.status_code == 429 and response.headers["retry-after"] == "3"
    # Every refusal but the last came while the request had other calls in flight: those lanes
    # closed, each after one call; the last refusal, with no call in flight, stands.
    assert len(fake_worker.record.requests) == MAX_CALLS_IN_FLIGHT


async def test_a_prompt_started_after_the_first_byte_fails_in_an_error_event(client: httpx.AsyncClient) -> None:
    prompts = ["ok"] * MAX_CALLS_IN_FLIGHT + ["overflow"]
    assert (await client.post("/v1/completions", json=completions(prompts, False))).status_code == 400
    response = await client.post("/v1/completions", json=completions(prompts, True))
    assert response.status_code == 200
    events = response.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    error = json.loads(events[-3].removeprefix("data: "))["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "prompt")


async def test_a_failure_in_the_first_prompts_is_an_http_error(client: httpx.AsyncClient) -> None:
    prompts = ["ok"] * (MAX_CALLS_IN_FLIGHT - 1) + ["overflow"] + ["ok"] * 10
    response = await client.post("/v1/completions", json=completions(prompts, True))
    assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"


async def test_too_many_prompts_is_a_400(client: httpx.AsyncClient, fake_worker: FakeWorker) -> None:
    response = await client.post("/v1/completions", json=completions(["x"] * (MAX_INPUTS + 1), False))
    assert response.status_code == 400 and response.json()["error"]["param"] == "prompt"
    assert str(MAX_INPUTS) in response.json()["error"]["message"]
    assert fake_worker.record.requests == []
