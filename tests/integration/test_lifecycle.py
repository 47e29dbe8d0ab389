"""The processes as an operator runs them: `tokenwire serve`, and a worker draining on SIGTERM."""
from __future__ import annotations

import signal
import threading

import grpc
import httpx
import openai

from tests.conftest import CACHE_DIR
from tests.prometheus import scrape
from tests.servers import free_port, grpc_serving, start, start_worker
from tokenwire.v1 import generation_pb2, generation_pb2_grpc

from .conftest import CHAT_MODEL


def test_serve_starts_worker_and_bridge_and_stops_on_sigterm(tmp_path):
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    flags = ["--http-port", str(http_port), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port)]
    stack = start("serve", ["serve", *flags, "--api-key", "serve-key", "--cache-dir", str(CACHE_DIR)], tmp_path)
    try:
        stack.wait_until(lambda: "tokenwire is ready" in stack.log.read_text(), 300)
        banner = stack.log.read_text()
        assert f"http://127.0.0.1:{http_port}/v1" in banner
        assert f"http://127.0.0.1:{metrics_port}/metrics (worker)" in banner
        url = f"http://127.0.0.1:{http_port}"
        assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 401
        # The one key opens the bridge, and the bridge passes it on to the worker.
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="serve-key", max_retries=0)
        reply = client.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert reply.choices[0].message.content
        worker_metrics = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        generated = worker_metrics.value("tokenwire_engine_generated_tokens_total", model=CHAT_MODEL)
        assert generated == reply.usage.completion_tokens
        stack.process.send_signal(signal.SIGTERM)
        assert stack.process.wait(timeout=60) == 0
        try:
            httpx.get(f"http://127.0.0.1:{http_port}/health", timeout=2)
            raise AssertionError("the bridge still answers after SIGTERM")
        except httpx.ConnectError:
            pass
        assert not _answers(f"127.0.0.1:{grpc_port}")
    finally:
        stack.stop()


def _answers(address: str) -> bool:
    try:
        return grpc_serving(address)
    except grpc.RpcError:
        return False


def test_sigterm_lets_in_flight_streams_finish(tmp_path):
    address, worker = start_worker(
        tmp_path, "--cache-dir", str(CACHE_DIR), "--no-default-models", "--model", CHAT_MODEL,
        "--shutdown-grace", "30",
    )
    try:
        request = generation_pb2.GenerateRequest(
            text="Write a long story.",
            sampling=generation_pb2.SamplingParams(temperature=0),
            stopping=generation_pb2.StoppingCriteria(max_new_tokens=150, ignore_eos=True),
        )
        with grpc.insecure_channel(address) as channel:
            stream = generation_pb2_grpc.GenerationStub(channel).GenerateStream(request)
            assert next(stream).HasField("prompt_info")
            events: list = []
            reader = threading.Thread(target=lambda: events.extend(stream))
            reader.start()
            worker.process.send_signal(signal.SIGTERM)
            reader.join(timeout=60)
        assert events[-1].HasField("usage") and events[-1].usage.completion_tokens == 150
        assert worker.process.wait(timeout=60) == 0
    finally:
        worker.stop()
