"""The bridge's Prometheus metrics, as HTTP clients see them.

Two collection points: an ASGI middleware (requests by route and status code, duration, requests
in flight) and a gRPC client interceptor on the worker channels (prompt and completion tokens
from the usage the worker returns, or counted from the messages of a stream that ends before its
usage; time to first token and inter-token latency of streams, measured from the HTTP request's
arrival as the chunks go out).
"""
from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenwire.metrics_registry import process_registry
from tokenwire.v1 import common_pb2, embedding_pb2, generation_pb2

REGISTRY = process_registry()

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"

HTTP_REQUESTS = Counter(
    "tokenwire_http_requests_total",
    "HTTP requests by method, route template and status code (a stream counts with its 200).",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "tokenwire_http_request_duration_seconds",
    "From an HTTP request's arrival to the end of its response (streams included).",
    ["method", "route"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
HTTP_IN_FLIGHT = Gauge(
    "tokenwire_http_requests_in_flight",
    "HTTP requests being answered, open streams included.",
    registry=REGISTRY,
)
PROMPT_TOKENS = Counter(
    "tokenwire_prompt_tokens_total",
    "Prompt tokens (generation and embeddings), from the usage the worker returns.",
    ["model"],
    registry=REGISTRY,
)
COMPLETION_TOKENS = Counter(
    "tokenwire_completion_tokens_total",
    "Completion tokens, from the usage the worker returns (streams cut short: the tokens streamed).",
    ["model"],
    registry=REGISTRY,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "tokenwire_time_to_first_token_seconds",
    "Streams: from the HTTP request's arrival to its first chunk with generated text.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
INTER_TOKEN_LATENCY = Histogram(
    "tokenwire_inter_token_latency_seconds",
    "Streams: between consecutive chunks with generated text of one choice.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)

# When the current HTTP request arrived (monotonic clock); gRPC calls inherit it.
_REQUEST_STARTED: ContextVar[float | None] = ContextVar("tokenwire_request_started", default=None)


def route_template(routes: Sequence[BaseRoute], scope: Scope) -> str:
    """The path template of the route serving `scope` (bounded label values, ids left out)."""
    for route in routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            return str(getattr(route, "path", UNMATCHED_ROUTE))
    return UNMATCHED_ROUTE


class HTTPMetricsMiddleware:
    """Counts and times every HTTP request, by method, route template and status code."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"] if scope["method"] in _METHODS else "other"
        route = route_template(self.routes, scope)
        started = time.monotonic()
        started_token = _REQUEST_STARTED.set(started)
        status = 500  # unless a response starts: an exception escaped the app

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        HTTP_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            HTTP_IN_FLIGHT.dec()
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_DURATION.labels(method, route).observe(time.monotonic() - started)
            _REQUEST_STARTED.reset(started_token)


def _record_usage(model: str, usage: common_pb2.Usage) -> None:
    PROMPT_TOKENS.labels(model).inc(usage.prompt_tokens)
    COMPLETION_TOKENS.labels(model).inc(usage.completion_tokens)


async def _observed_stream(
    call: AsyncIterator[generation_pb2.GenerateStreamResponse], started: float
) -> AsyncIterator[generation_pb2.GenerateStreamResponse]:
    """The messages of a GenerateStream call, unchanged; they feed the metrics as they pass.

    The worker's usage comes last, so a stream that ends before it (client gone, cancelled,
    failed) counts its prompt and the token ids of the deltas read so far instead.
    """
    model = ""  # set once the worker has admitted the request (PromptInfo)
    streamed = common_pb2.Usage()
    usage_read = False
    last_text_at: dict[int, float] = {}
    try:
        async for message in call:
            kind = message.WhichOneof("event")
            if kind == "prompt_info":
                model = message.prompt_info.model
                streamed.prompt_tokens = message.prompt_info.prompt_tokens
            elif kind == "delta":
                streamed.completion_tokens += len(message.delta.token_ids)
                if message.delta.text:
                    now = time.monotonic()
                    previous = last_text_at.get(message.delta.index)
                    if not last_text_at:
                        TIME_TO_FIRST_TOKEN.labels(model).observe(now - started)
                    elif previous is not None:
                        INTER_TOKEN_LATENCY.labels(model).observe(now - previous)
                    last_text_at[message.delta.index] = now
            elif kind == "usage":
                usage_read = True
                _record_usage(model, message.usage)
            yield message
    finally:
        if model and not usage_read:
            _record_usage(model, streamed)


_GENERATE = b"/tokenwire.v1.Generation/Generate"
_GENERATE_STREAM = b"/tokenwire.v1.Generation/GenerateStream"
_EMBED = b"/tokenwire.v1.Embedding/Embed"


def _method(details: grpc.aio.ClientCallDetails) -> bytes:
    method = details.method
    return method if isinstance(method, bytes) else method.encode()


class _UnaryUsageInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Reads the usage of Generate and Embed answers."""

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[grpc.aio.UnaryUnaryCall]],
        details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> grpc.aio.UnaryUnaryCall:
        call = await continuation(details, request)
        method = _method(details)
        if method not in (_GENERATE, _EMBED):
            return call
        try:
            response = await call
        except grpc.aio.AioRpcError:
            return call  # awaiting it again raises the same error to the caller
        if isinstance(response, generation_pb2.GenerateResponse):
            _record_usage(response.prompt_info.model, response.usage)
        elif isinstance(response, embedding_pb2.EmbedResponse):
            _record_usage(response.model, response.usage)
        return call


def _with_token_ids(request: generation_pb2.GenerateRequest) -> generation_pb2.GenerateRequest:
    """`request` asking for the token ids of every delta (a copy: the caller's stays as it was)."""
    if request.response.token_ids:
        return request
    counted = generation_pb2.GenerateRequest()
    counted.CopyFrom(request)
    counted.response.token_ids = True
    return counted


class _StreamUsageInterceptor(grpc.aio.UnaryStreamClientInterceptor):
    """Reads the usage and the timing of GenerateStream messages as they are read.

    It asks the worker for the deltas' token ids, the only way to count the completion tokens of a
    stream that ends before the worker's usage.
    """

    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[grpc.aio.UnaryStreamCall]],
        details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> grpc.aio.UnaryStreamCall | AsyncIterator[Any]:
        if _method(details) != _GENERATE_STREAM:
            return await continuation(details, request)
        call = await continuation(details, _with_token_ids(request))
        started = _REQUEST_STARTED.get()
        return _observed_stream(call, time.monotonic() if started is None else started)


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """The interceptors of the worker channels (grpc.aio files each under one call kind only)."""
    return [_UnaryUsageInterceptor(), _StreamUsageInterceptor()]
