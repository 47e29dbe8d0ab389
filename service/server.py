"""grpc.aio worker assembly: servicers, health, reflection, options, model loading, signals.

The server listens at once, reporting NOT_SERVING (and UNAVAILABLE to calls) until every model
is loaded and warmed up. On SIGTERM it reports NOT_SERVING, lets in-flight calls finish for the
grace period, then aborts the generations still going (their calls end OK, with
FINISH_REASON_ABORTED and their usage) and stops.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.config import WorkerSettings
from service.engine.types import GenerationRequest, SamplingParams, StoppingParams
from service.metrics import serve_metrics
from service.models.loading import load_embedding_model, load_generation_model, parse_spec
from service.models.registry import EmbeddingModel, GenerationModel, ModelRegistry
from service.servicers.auth import ApiKeyInterceptor
from service.servicers.embedding import EmbeddingServicer
from service.servicers.generation import GenerationServicer
from service.servicers.models import ModelsServicer
from service.servicers.status import ErrorMappingInterceptor
from service.servicers.tokenization import TokenizationServicer
from service.text.encoding import min_token_count
from tokenwire import tracing
from tokenwire.v1 import (
    embedding_pb2,
    embedding_pb2_grpc,
    generation_pb2,
    generation_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    tokenization_pb2,
    tokenization_pb2_grpc,
)

log = logging.getLogger("tokenwire.worker")

SERVICE_NAMES = tuple(
    module.DESCRIPTOR.services_by_name[name].full_name
    for module, name in (
        (generation_pb2, "Generation"),
        (embedding_pb2, "Embedding"),
        (tokenization_pb2, "Tokenization"),
        (models_pb2, "Models"),
    )
)
_MESSAGE_LIMIT = 64 * 1024 * 1024
SERVER_OPTIONS = [
    ("grpc.max_send_message_length", _MESSAGE_LIMIT),
    ("grpc.max_receive_message_length", _MESSAGE_LIMIT),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
]


GIL_SWITCH_INTERVAL_S = 0.0005
# After the grace period, aborted generations have this long to send their last deltas and usage.
ABORT_FLUSH_S = 2.0


def default_cpu_threads() -> int:
    """All cores but one, which the event loop (and, under `tokenwire serve`, the bridge) needs:
    a tensor thread pool that must wait for a busy core at every operation is slower than a
    smaller one."""
    return max(1, min(torch.get_num_threads(), len(os.sched_getaffinity(0)) - 1))


def load_models(settings: WorkerSettings, registry: ModelRegistry) -> None:
    """Blocking: runs in a thread while the server already answers health checks."""
    torch.set_num_threads(settings.threads or default_cpu_threads())
    for spec in settings.generation_models:
        registry.add(load_generation_model(spec, settings))
    for spec in settings.embedding_models:
        registry.add(load_embedding_model(spec, settings))


async def warm_up(registry: ModelRegistry) -> None:
    """One tiny generation and one embedding per model, so the first client does not pay for
    lazy initialisation, and a broken model fails the start rather than the first request."""
    for model in registry.all():
        if isinstance(model, GenerationModel):
            model.engine.start()
            request = GenerationRequest(
                request_id="warm-up",
                prompt_ids=tuple(model.tokenizer.encode("Hello")),
                sampling=SamplingParams(temperature=0.0),
                stopping=StoppingParams(max_new_tokens=2),
            )
            async for _ in model.engine.submit(request):
                pass
            if model.constraints is not None:  # builds the grammar engine's view of the tokenizer
                await asyncio.to_thread(model.constraints.json_object)
            # Reads the vocabulary once (about a second) for the early refusal of oversized prompts.
            await asyncio.to_thread(min_token_count, model.tokenizer, "Hello")
        elif isinstance(model, EmbeddingModel):
            await model.embedder.embed([model.tokenizer.encode("Hello")])


async def _set_health(servicer: health.aio.HealthServicer, status: int) -> None:
    for name in ("", *SERVICE_NAMES):
        await servicer.set(name, status)


async def _watch_engines(registry: ModelRegistry, servicer: health.aio.HealthServicer) -> None:
    """Reports NOT_SERVING for good once a generation engine's thread has died."""
    while True:
        await asyncio.sleep(1.0)
        if any(isinstance(m, GenerationModel) and not m.engine.alive for m in registry.all()):
            log.error("a generation engine stopped; reporting NOT_SERVING")
            await _set_health(servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
            return


async def drain(server: grpc.aio.Server, registry: ModelRegistry, grace_s: float) -> None:
    """Stops taking calls and lets in-flight ones finish for `grace_s`. Then aborts the
    generations still going, so that their calls end normally (an abort is not an error), and
    cancels whatever is left ABORT_FLUSH_S later."""
    stopping = asyncio.create_task(server.stop(grace_s + ABORT_FLUSH_S))
    done, _ = await asyncio.wait({stopping}, timeout=grace_s)
    if not done:
        log.info("grace period over: aborting the generations still going")
        for model in registry.all():
            if isinstance(model, GenerationModel) and model.engine.alive:
                model.engine.abort_all()
    await stopping


async def serve(settings: WorkerSettings) -> None:
    registry = ModelRegistry()
    interceptors: list[grpc.aio.ServerInterceptor] = [ErrorMappingInterceptor()]
    if settings.api_keys:
        interceptors.insert(0, ApiKeyInterceptor(settings.api_keys))
    server = grpc.aio.server(interceptors=interceptors, options=SERVER_OPTIONS)
    generation_pb2_grpc.add_GenerationServicer_to_server(GenerationServicer(registry), server)
    embedding_pb2_grpc.add_EmbeddingServicer_to_server(EmbeddingServicer(registry), server)
    tokenization_pb2_grpc.add_TokenizationServicer_to_server(TokenizationServicer(registry), server)
    models_pb2_grpc.add_ModelsServicer_to_server(ModelsServicer(registry), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    if server.add_insecure_port(settings.address) == 0:
        raise SystemExit(f"cannot listen on {settings.address}")
    await _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
    stop_metrics: Callable[[], None] | None = None
    if settings.metrics_port:
        try:
            stop_metrics = serve_metrics(settings.grpc_host, settings.metrics_port, registry)
        except OSError as error:
            raise SystemExit(
                f"cannot serve metrics on {settings.grpc_host}:{settings.metrics_port}: {error}"
            ) from None
        log.info("metrics on http://%s:%d/metrics", settings.grpc_host, settings.metrics_port)
    await server.start()
    log.info("listening on %s; loading models", settings.address)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def load_then_serve() -> None:
        await asyncio.to_thread(load_models, settings, registry)
        await warm_up(registry)
        registry.ready = True
        await _set_health(health_servicer, health_pb2.HealthCheckResponse.SERVING)
        log.info("worker ready on %s: %s", settings.address, ", ".join(m.card.model_id for m in registry.all()))
        await _watch_engines(registry, health_servicer)

    loading = asyncio.create_task(load_then_serve())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({loading, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if loading.done() and loading.exception() is not None:
        await server.stop(0)
        if stop_metrics is not None:
            stop_metrics()
        raise loading.exception()  # type: ignore[misc]
    await stopped
    log.info("shutting down: draining for up to %.0fs", settings.shutdown_grace_s)
    loading.cancel()
    await health_servicer.enter_graceful_shutdown()
    await drain(server, registry, settings.shutdown_grace_s)
    for model in registry.all():
        if isinstance(model, GenerationModel) and model.engine.alive:
            model.engine.stop()
        elif isinstance(model, EmbeddingModel):
            model.embedder.close()
    if stop_metrics is not None:
        stop_metrics()


def checked_settings(args: argparse.Namespace) -> WorkerSettings:
    """The worker's settings, with everything that needs no model loading checked first: flag
    values (e.g. --price), model paths, prices for models not served. A problem is a one-line
    SystemExit, not a traceback after the models have loaded."""
    try:
        settings = WorkerSettings.from_args(args)
        served = {parse_spec(spec).model_id for spec in (*settings.generation_models, *settings.embedding_models)}
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"tokenwire worker: {error}") from None
    unknown = ", ".join(sorted(set(settings.prices) - served))
    if unknown:
        raise SystemExit(f"tokenwire worker: --price names models that are not served: {unknown}")
    return settings


def run_worker(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = checked_settings(args)
    tracing.configure("tokenwire-worker", settings.otlp_endpoint)
    # The engine thread needs the GIL back after every tensor operation; with the default 5 ms
    # switch interval it waits behind the event loop's work, which measured 23 ms per token
    # against 15 ms with 0.5 ms for one stream on 2 cores.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    asyncio.run(serve(settings))
