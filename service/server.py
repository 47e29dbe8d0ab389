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
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection

from service.api_server import ApiServicers, api_server
from service.config import WorkerSettings, checked_settings
from service.engine.types import GenerationRequest, SamplingParams, StoppingParams
from service.metrics import serve_metrics
from service.models.hardware import resolve_device, resolve_dtype, resolve_quantization
from service.models.loading import load_embedding_model, load_generation_model
from service.models.registry import EmbeddingModel, GenerationModel, ModelRegistry
from service.servicers.auth import ApiKeyInterceptor
from service.servicers.embedding import EmbeddingServicer
from service.servicers.generation import GenerationServicer
from service.servicers.models import ModelsServicer
from service.servicers.status import ErrorMappingInterceptor
from service.servicers.tokenization import TokenizationServicer
from service.text.encoding import min_token_count
from tokenwire import tracing
from tokenwire.startup import StartupError, check_can_listen, one_line_errors
from tokenwire.v1 import embedding_pb2, generation_pb2, models_pb2, tokenization_pb2

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

GIL_SWITCH_INTERVAL_S = 0.0005
# After the grace period, aborted generations have this long to send their last deltas and usage.
ABORT_FLUSH_S = 2.0


def default_cpu_threads() -> int:
    """All cores but one, which the event loop (and, under `tokenwire serve`, the bridge) needs:
    a tensor thread pool that must wait for a busy core at every operation is slower than a
    smaller one."""
    return max(1, min(torch.get_num_threads(), len(os.sched_getaffinity(0)) - 1))


def check_hardware(settings: WorkerSettings) -> None:
    """--device, --dtype and --quantization against this machine, before anything is loaded.
    Raises StartupError."""
    try:
        device = resolve_device(settings.device)
    except ValueError as error:
        raise StartupError(f"--device {settings.device}", str(error)) from None
    try:
        resolve_dtype(settings.dtype, device)
    except ValueError as error:
        raise StartupError(f"--dtype {settings.dtype}", str(error)) from None
    try:
        resolve_quantization(settings.quantization, device, gguf_bits=None, native_kernels=False)
    except ValueError as error:
        raise StartupError(f"--quantization {settings.quantization}", str(error)) from None


def load_models(settings: WorkerSettings, registry: ModelRegistry) -> None:
    """Blocking: runs in a thread while the server already answers health checks. A model that
    cannot be loaded is a StartupError naming its flag."""
    torch.set_num_threads(settings.threads or default_cpu_threads())
    loaders = {"--model": load_generation_model, "--embedding-model": load_embedding_model}
    for flag, spec in settings.model_flags():
        try:
            model = loaders[flag](spec, settings)
        except Exception as error:
            log.debug("loading %s failed", spec, exc_info=True)
            raise StartupError(f"{flag} {spec}", f"cannot load it: {type(error).__name__}: {error}") from error
        registry.add(model)


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
    servicers = ApiServicers(
        generation=GenerationServicer(registry),
        embedding=EmbeddingServicer(registry),
        tokenization=TokenizationServicer(registry),
        models=ModelsServicer(registry),
    )
    server, health_servicer = api_server(servicers, interceptors)
    reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    check_can_listen(settings.grpc_host, settings.grpc_port, f"--grpc-port {settings.grpc_port}")
    server.add_insecure_port(settings.address)
    await _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
    stop_metrics: Callable[[], None] | None = None
    if settings.metrics_port:
        try:
            stop_metrics = serve_metrics(settings.grpc_host, settings.metrics_port, registry)
        except OSError as error:
            raise StartupError(
                f"--metrics-port {settings.metrics_port}",
                f"cannot listen on {settings.grpc_host}:{settings.metrics_port}: {error.strerror or error}",
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


def run_worker(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with one_line_errors("worker"):
        settings = checked_settings(args)
        check_hardware(settings)
        tracing.configure("tokenwire-worker", settings.otlp_endpoint)
        # The engine thread needs the GIL back after every tensor operation; with the default 5 ms
        # switch interval it waits behind the event loop's work, which measured 23 ms per token
        # against 15 ms with 0.5 ms for one stream on 2 cores.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        asyncio.run(serve(settings))
