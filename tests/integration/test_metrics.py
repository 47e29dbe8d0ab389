"""Prometheus metrics of the bridge (GET /metrics) and of the worker (--metrics-port), scraped
before and after real requests. Tests run one at a time, so the differences of counters are exact;
the in-flight gauge is read on a bridge no other test uses."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.prometheus import Scrape, scrape
from tests.servers import start_bridge
from tokenwire.v1 import generation_pb2

from .conftest import BRIDGE_WORKER_KEY, CHAT_MODEL, EMBEDDING_MODEL

CHAT_ROUTE = "/v1/chat/completions"
HI = [{"role": "user", "content": "Name three colours."}]


def _delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


def test_bridge_counts_requests_by_route_and_status_code(bridge_url, http):
    before = scrape(f"{bridge_url}/metrics")
    assert http.get("/v1/models").status_code == 200
    assert http.get("/v1/models/nobody/nothing").status_code == 404
    assert http.get("/v1/not-a-route").status_code == 404
    assert http.post(CHAT_ROUTE, json={"model": CHAT_MODEL, "messages": HI, "temperature": 3}).status_code == 400
    after = scrape(f"{bridge_url}/metrics")
    counts = {
        ("GET", "/v1/models", "200"): 1,
        ("GET", "/v1/models/{model_id:path}", "404"): 1,
        ("GET", "unmatched", "404"): 1,
        ("POST", CHAT_ROUTE, "400"): 1,
        ("POST", CHAT_ROUTE, "200"): 0,
    }
    for (method, route, status), count in counts.items():
        labels = {"method": method, "route": route, "status": status}
        assert _delta(before, after, "tokenwire_http_requests_total", **labels) == count, labels
    assert _delta(before, after, "tokenwire_http_request_duration_seconds_count", route="/v1/models") == 1


def test_bridge_counts_tokens_from_the_workers_usage(bridge_url, client):
    story = dict(
        model=CHAT_MODEL, prompt="Once upon a time", max_tokens=4, temperature=0, extra_body={"ignore_eos": True}
    )
    story_prompt_tokens = client.completions.create(**story).usage.prompt_tokens
    before = scrape(f"{bridge_url}/metrics")
    chat = client.chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=5, temperature=0)
    streamed = list(
        client.chat.completions.create(
            model=CHAT_MODEL, messages=HI, max_tokens=7, stream=True, stream_options={"include_usage": True}
        )
    )[-1].usage
    # Without include_usage the client sees no usage, but the bridge still counts the tokens.
    list(client.completions.create(**story, stream=True))
    embedded = client.embeddings.create(model=EMBEDDING_MODEL, input=["one", "two words"])
    after = scrape(f"{bridge_url}/metrics")
    prompt_counter = "tokenwire_prompt_tokens_total"
    assert _delta(before, after, prompt_counter, model=CHAT_MODEL) == (
        chat.usage.prompt_tokens + streamed.prompt_tokens + story_prompt_tokens
    )
    assert _delta(before, after, "tokenwire_completion_tokens_total", model=CHAT_MODEL) == (
        chat.usage.completion_tokens + streamed.completion_tokens + 4
    )
    assert _delta(before, after, prompt_counter, model=EMBEDDING_MODEL) == embedded.usage.prompt_tokens


def test_bridge_times_first_token_and_inter_token_latency_of_streams(bridge_url, http):
    before = scrape(f"{bridge_url}/metrics")
    body = {"model": CHAT_MODEL, "messages": HI, "max_tokens": 12, "temperature": 0, "ignore_eos": True}
    assert http.post(CHAT_ROUTE, json=body).status_code == 200  # not streamed: no TTFT sample
    started = time.monotonic()
    with http.stream("POST", CHAT_ROUTE, json={**body, "stream": True}) as response:
        payloads = [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: {")]
    elapsed = time.monotonic() - started
    after = scrape(f"{bridge_url}/metrics")
    texts = [c["choices"][0]["delta"].get("content") for c in map(json.loads, payloads) if c["choices"]]
    with_text = sum(1 for text in texts if text)
    assert with_text >= 2
    ttft = "tokenwire_time_to_first_token_seconds"
    assert _delta(before, after, f"{ttft}_count", model=CHAT_MODEL) == 1
    assert 0 < _delta(before, after, f"{ttft}_sum", model=CHAT_MODEL) < elapsed
    itl = "tokenwire_inter_token_latency_seconds"
    assert _delta(before, after, f"{itl}_count", model=CHAT_MODEL) == with_text - 1
    assert 0 < _delta(before, after, f"{itl}_sum", model=CHAT_MODEL) < elapsed


@pytest.fixture(scope="module")
def quiet_bridge_url(worker_address, tmp_path_factory) -> Iterator[str]:
    """A bridge of its own in front of the session's worker: no other test's requests are in
    flight through it."""
    url, bridge = start_bridge(tmp_path_factory.mktemp("logs"), worker_address)
    yield url
    bridge.stop()


def test_bridge_counts_requests_in_flight_streams_included(quiet_bridge_url):
    metrics_url = f"{quiet_bridge_url}/metrics"
    in_flight = "tokenwire_http_requests_in_flight"
    assert scrape(metrics_url).value(in_flight) == 1  # the scrape itself
    body = {"model": CHAT_MODEL, "messages": HI, "max_tokens": 2000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{quiet_bridge_url}{CHAT_ROUTE}", json=body, timeout=120) as response:
        lines = response.iter_lines()  # kept: a dropped line iterator closes the response
        assert next(lines).startswith("data: ")
        assert scrape(metrics_url).value(in_flight) == 2
    deadline = time.monotonic() + 10
    while scrape(metrics_url).value(in_flight) != 1:
        assert time.monotonic() < deadline, "the closed stream is still counted in flight"
        time.sleep(0.1)


def test_bridge_counts_the_tokens_of_a_stream_the_client_closed(bridge_url, http):
    metrics_url = f"{bridge_url}/metrics"
    completion_counter = "tokenwire_completion_tokens_total"
    before = scrape(metrics_url)
    body = {"model": CHAT_MODEL, "messages": HI, "max_tokens": 2000, "ignore_eos": True, "stream": True}
    content_chunks = 0
    with http.stream("POST", CHAT_ROUTE, json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                choices = json.loads(line[len("data: ") :])["choices"]
                content_chunks += bool(choices and choices[0]["delta"].get("content"))
            if content_chunks == 5:
                break  # leaving the block closes the connection mid-stream
    assert content_chunks == 5
    # The bridge notices the disconnect on its next write; the worker never sends its usage.
    deadline = time.monotonic() + 10
    while (counted := _delta(before, scrape(metrics_url), completion_counter, model=CHAT_MODEL)) < content_chunks:
        assert time.monotonic() < deadline, f"{counted} completion tokens counted, {content_chunks} chunks read"
        time.sleep(0.1)
    after = scrape(metrics_url)
    assert _delta(before, after, completion_counter, model=CHAT_MODEL) < body["max_tokens"]
    assert _delta(before, after, "tokenwire_prompt_tokens_total", model=CHAT_MODEL) > 0


def test_worker_counts_tokens_finish_reasons_and_time_to_first_token(secured_stack, secured_stubs):
    before = scrape(secured_stack.worker_metrics_url)
    request = generation_pb2.GenerateRequest(
        model=CHAT_MODEL,
        text="The weather today is",
        sampling=generation_pb2.SamplingParams(n=2, seed=1),
        stopping=generation_pb2.StoppingCriteria(max_new_tokens=4, ignore_eos=True),
    )
    reply = secured_stubs.generation.Generate(
        request, metadata=(("authorization", f"Bearer {BRIDGE_WORKER_KEY}"),), timeout=60
    )
    after = scrape(secured_stack.worker_metrics_url)
    model = {"model": CHAT_MODEL}
    assert reply.usage.completion_tokens == 8
    assert _delta(before, after, "tokenwire_engine_generated_tokens_total", **model) == 8
    assert _delta(before, after, "tokenwire_engine_prompt_tokens_total", **model) == reply.usage.prompt_tokens
    finished = "tokenwire_engine_sequences_finished_total"
    assert _delta(before, after, finished, finish_reason="length", **model) == 2
    assert _delta(before, after, finished, **model) == 2
    assert _delta(before, after, "tokenwire_engine_time_to_first_token_seconds_count", **model) == 1
    assert {"tokenwire_engine_waiting_requests", "tokenwire_engine_running_sequences"} <= after.names()
    assert "process_cpu_seconds_total" in after.names()
    # One step for the shared prefill, then 3 steps of both siblings' decode tokens.
    assert _delta(before, after, "tokenwire_engine_steps_total", **model) == 4
    assert _delta(before, after, "tokenwire_engine_step_tokens_total", **model) == reply.usage.prompt_tokens + 6
    forward = _delta(before, after, "tokenwire_engine_forward_seconds_total", **model)
    assert 0 < forward <= _delta(before, after, "tokenwire_engine_step_seconds_total", **model)


def test_worker_metrics_port_is_plain_http_without_a_key(secured_stack):
    response = httpx.get(secured_stack.worker_metrics_url, timeout=10)
    assert response.status_code == 200 and "tokenwire_engine_running_sequences" in response.text
