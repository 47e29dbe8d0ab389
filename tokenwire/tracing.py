"""Optional OpenTelemetry tracing, shared by the worker and the bridge.

Off unless an OTLP endpoint is given (--otlp-endpoint, TOKENWIRE_OTLP_ENDPOINT): then the process
exports its spans over OTLP/gRPC. The bridge opens a span per HTTP request and passes its context
on to the worker as W3C `traceparent` gRPC metadata; the worker records each generation's stages
(validation, queue, prompt, generation) as spans under it. Off, every span is the API's no-op.
"""
from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterable, Mapping, Sequence

from opentelemetry import propagate, trace
from opentelemetry.context import Context


def add_tracing_argument(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--otlp-endpoint",
        default=os.environ.get("TOKENWIRE_OTLP_ENDPOINT") or None,
        metavar="URL",
        help="export traces over OTLP/gRPC to this collector, e.g. http://otel-collector:4317 "
        "(env TOKENWIRE_OTLP_ENDPOINT; default: no tracing)",
    )


def configure(service_name: str, endpoint: str | None) -> None:
    """Exports the process's spans to `endpoint`; without one, tracing stays off."""
    if not endpoint:
        return
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)


def outgoing_metadata() -> tuple[tuple[str, str], ...]:
    """The current span's context as gRPC metadata (`traceparent`); empty when tracing is off."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items())


def incoming_context(metadata: Iterable[tuple[str, str | bytes]]) -> Context:
    """The caller's span context, from its gRPC metadata."""
    return propagate.extract({key: value for key, value in metadata if isinstance(value, str)})


def record(
    name: str, parent: Context, stages: Sequence[tuple[str, float, float]], attributes: Mapping[str, str]
) -> None:
    """A span under `parent` over `stages` (name, start, end: time.monotonic() readings, recorded
    after the fact), with a child span per stage."""
    tracer = trace.get_tracer("tokenwire.worker")
    offset_ns = time.time_ns() - time.monotonic_ns()

    def ns(monotonic_s: float) -> int:
        return offset_ns + int(monotonic_s * 1e9)

    span = tracer.start_span(
        name, context=parent, kind=trace.SpanKind.SERVER, attributes=attributes, start_time=ns(stages[0][1])
    )
    inside = trace.set_span_in_context(span)
    for stage, start, end in stages:
        tracer.start_span(stage, context=inside, start_time=ns(start)).end(end_time=ns(end))
    span.end(end_time=ns(stages[-1][2]))
