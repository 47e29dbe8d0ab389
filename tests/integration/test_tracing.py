"""Tracing end to end, in one process: the bridge's app and a worker (grpc.aio, the real
Generation servicer and default model) on loopback, with OpenTelemetry's in-memory exporter.
One chat completion is one trace, from the HTTP request down to the engine's stages."""
from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from rest_bridge.app import create_app
from rest_bridge.config import BridgeSettings
from service.api_server import ApiServicers, api_server
from service.models.registry import ModelRegistry
from service.servicers.generation import GenerationServicer
from service.servicers.status import ErrorMappingInterceptor
from tests.in_process import listening

from .conftest import CHAT_MODEL


@pytest.fixture(scope="module")
def exported() -> InMemorySpanExporter:
    """Every span this process records from now on (a process has one tracer provider)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


@pytest.fixture
async def worker(generation_model) -> AsyncIterator[str]:
    registry = ModelRegistry()
    registry.add(generation_model)
    registry.ready = True
    server, _ = api_server(ApiServicers(generation=GenerationServicer(registry)), [ErrorMappingInterceptor()])
    async with listening(server) as address:
        yield address


def _children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return sorted((s for s in spans if s.parent and s.parent.span_id == parent.context.span_id),
                  key=lambda s: s.start_time)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_one_trace_from_the_http_request_to_the_engine(exported, worker, stream) -> None:
    exported.clear()
    app = create_app(BridgeSettings(worker_address=worker, request_timeout=60))
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "stream": stream}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge") as http:
        response = await http.post("/v1/chat/completions", json=body, headers={"x-request-id": "traced-1"})
    await app.state.upstreams.close()
    assert response.status_code == 200

    spans = list(exported.get_finished_spans())
    [request] = [s for s in spans if s.name == "POST /v1/chat/completions"]
    assert request.parent is None and request.kind == trace.SpanKind.SERVER
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["tokenwire.request_id"] == "traced-1"
    # The worker's span is the HTTP request's child, through the traceparent gRPC metadata.
    [generate] = _children(spans, request)
    assert generate.name == "tokenwire.generate" and generate.context.trace_id == request.context.trace_id
    assert generate.attributes["tokenwire.request_id"] == "traced-1"
    stages = _children(spans, generate)
    assert [s.name for s in stages] == ["validation", "queue", "prompt", "generation"]
    assert stages[0].start_time == generate.start_time and stages[-1].end_time == generate.end_time
    assert all(a.end_time == b.start_time for a, b in zip(stages, stages[1:]))  # one after the other
    assert request.start_time <= generate.start_time and generate.end_time <= request.end_time


def test_tracing_is_off_without_an_endpoint() -> None:
    """A fresh process, configured as the worker and the bridge are by default: every span is
    the API's no-op, and calls to the worker carry no trace context."""
    code = (
        "from opentelemetry import trace; from tokenwire import tracing; "
        "tracing.configure('tokenwire-bridge', None); "
        "span = trace.get_tracer('t').start_span('s'); "
        "ctx = trace.set_span_in_context(span); "
        "from opentelemetry import context; context.attach(ctx); "
        "print(span.is_recording(), tracing.outgoing_metadata())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["False", "()"], result.stderr
