"""A span per HTTP request, under which the calls to the worker run: they carry its context as
`traceparent` metadata (upstream.py). A no-op unless tracing is on (tokenwire/tracing.py)."""
from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import trace
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rest_bridge.metrics import route_template


class TracingMiddleware:
    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = routes
        self._tracer = trace.get_tracer("rest_bridge")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_template(self.routes, scope)
        attributes = {
            "http.request.method": scope["method"],
            "http.route": route,
            "url.path": scope["path"],
            "tokenwire.request_id": scope.get("state", {}).get("request_id", ""),
        }
        name = f"{scope['method']} {route}"
        with self._tracer.start_as_current_span(name, kind=trace.SpanKind.SERVER, attributes=attributes) as span:

            async def send_with_status(message: Message) -> None:
                if message["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", message["status"])
                    if message["status"] >= 500:
                        span.set_status(trace.StatusCode.ERROR)
                await send(message)

            await self.app(scope, receive, send_with_status)
