"""The Starlette application: route table, middleware (request id, metrics, API keys), error
handlers, lifespan."""
from __future__ import annotations

import argparse
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rest_bridge import errors
from rest_bridge.auth import ApiKeyMiddleware
from rest_bridge.batches.runner import BatchRunner
from rest_bridge.config import BridgeSettings
from rest_bridge.metrics import HTTPMetricsMiddleware
from rest_bridge.routes import (
    batches,
    chat,
    completions,
    embeddings,
    files,
    health,
    metrics,
    models,
    playground,
    responses,
    tokenize,
)
from rest_bridge.store import open_store
from rest_bridge.tracing import TracingMiddleware
from rest_bridge.upstream import Upstreams
from tokenwire import tracing
from tokenwire.limits import REQUEST_ID_PATTERN
from tokenwire.startup import check_can_listen, one_line_errors


class RequestIdMiddleware:
    """Takes the client's x-request-id (or makes one), keeps it in request.state, echoes it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get("x-request-id", "")
        request_id = given if REQUEST_ID_PATTERN.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["x-request-id"] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


ROUTES = [
    Route("/v1/chat/completions", chat.create_chat_completion, methods=["POST"]),
    Route("/v1/completions", completions.create_completion, methods=["POST"]),
    Route("/v1/embeddings", embeddings.create_embedding, methods=["POST"]),
    Route("/v1/responses", responses.create_response, methods=["POST"]),
    Route("/v1/responses/{response_id}", responses.retrieve_response, methods=["GET"]),
    Route("/v1/responses/{response_id}", responses.delete_response, methods=["DELETE"]),
    Route("/v1/responses/{response_id}/input_items", responses.list_input_items, methods=["GET"]),
    Route("/v1/files", files.create_file, methods=["POST"]),
    Route("/v1/files", files.list_files, methods=["GET"]),
    Route("/v1/files/{file_id}", files.retrieve_file, methods=["GET"]),
    Route("/v1/files/{file_id}", files.delete_file, methods=["DELETE"]),
    Route("/v1/files/{file_id}/content", files.file_content, methods=["GET"]),
    Route("/v1/batches", batches.create_batch, methods=["POST"]),
    Route("/v1/batches", batches.list_batches, methods=["GET"]),
    Route("/v1/batches/{batch_id}", batches.retrieve_batch, methods=["GET"]),
    Route("/v1/batches/{batch_id}/cancel", batches.cancel_batch, methods=["POST"]),
    Route("/v1/models", models.list_models, methods=["GET"]),
    Route("/v1/models/{model_id:path}", models.retrieve_model, methods=["GET"]),
    Route("/health", health.health, methods=["GET"]),
    Route("/metrics", metrics.metrics, methods=["GET"]),
    Route("/tokenize", tokenize.tokenize, methods=["POST"]),
    Route("/detokenize", tokenize.detokenize, methods=["POST"]),
    Route("/", playground.page, methods=["GET"]),
    Mount(playground.STATIC_PREFIX, app=playground.static_files),
]


def _middleware(settings: BridgeSettings) -> list[Middleware]:
    """Outermost first: a refused request still gets its id, is counted and traced."""
    middleware = [
        Middleware(RequestIdMiddleware),
        Middleware(HTTPMetricsMiddleware, routes=ROUTES),
        Middleware(TracingMiddleware, routes=ROUTES),
    ]
    if settings.api_keys:
        middleware.append(Middleware(ApiKeyMiddleware, keys=settings.api_keys))
    return middleware


def create_app(settings: BridgeSettings) -> Starlette:
    upstreams = Upstreams(
        settings.worker_address,
        settings.request_timeout,
        settings.worker_api_key,
        settings.model_workers,
        metadata_timeout=settings.metadata_timeout,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Opened by the server that serves the app; the runner lives in its event loop, and the
        # batches a previous run left unfinished resume now.
        store = app.state.store = open_store(settings.data_dir)
        runner = app.state.batch_runner = BatchRunner(store, upstreams, settings.batch_concurrency)
        await runner.start()
        try:
            yield
        finally:
            await runner.close()
            await upstreams.close()
            store.close()

    app = Starlette(
        routes=ROUTES,
        middleware=_middleware(settings),
        exception_handlers={
            errors.APIError: errors.handle_api_error,
            errors.ClientGone: errors.handle_client_gone,
            HTTPException: errors.handle_http_exception,
            Exception: errors.handle_unexpected,
        },
        lifespan=lifespan,
    )
    # Starlette would answer `/v1/chat/completions/` with an empty 307 to the slashless path, which
    # clients do not all follow for a POST (nor behind a proxy that rewrites the host): like any
    # unknown path, it is a 404 in the envelope, as OpenAI answers it.
    app.router.redirect_slashes = False
    app.state.settings = settings
    app.state.upstreams = upstreams
    return app


def run_bridge(args: argparse.Namespace) -> None:
    settings = BridgeSettings.from_args(args)
    with one_line_errors("bridge"):
        check_can_listen(settings.http_host, settings.http_port, f"--http-port {settings.http_port}")
    tracing.configure("tokenwire-bridge", settings.otlp_endpoint)
    # grpc.aio targets the standard asyncio event loop (its uvloop support is experimental).
    uvicorn.run(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_level="info",
        loop="asyncio",
    )
