"""The worker's Prometheus metrics, served over HTTP on --metrics-port.

Engine load (queue length, running batch, KV cache) and engine totals (steps, prefix cache,
preemptions) are read from the engines at scrape time; tokens, finish reasons and time to first
token are recorded by the Generation servicer through GenerationRecorder, one per call.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.engine.types import GenerationRequest, SequenceUpdate
from service.models.registry import GenerationModel, ModelRegistry
from tokenwire.metrics_registry import process_registry

REGISTRY = process_registry()

# Sequences that ended without a finish reason: client cancel, deadline, engine failure.
ABORTED = "aborted"
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

PROMPT_TOKENS = Counter(
    "tokenwire_engine_prompt_tokens_total",
    "Prompt tokens of the generation requests submitted to the engine.",
    ["model"],
    registry=REGISTRY,
)
GENERATED_TOKENS = Counter(
    "tokenwire_engine_generated_tokens_total",
    "Tokens generated, over all sequences.",
    ["model"],
    registry=REGISTRY,
)
SEQUENCES_FINISHED = Counter(
    "tokenwire_engine_sequences_finished_total",
    "Finished sequences by finish reason (stop, length, context_length, time_limit, ..., "
    "aborted); one per sequence, so a request with n=3 counts three.",
    ["model", "finish_reason"],
    registry=REGISTRY,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "tokenwire_engine_time_to_first_token_seconds",
    "From a request's submission to the engine (its queue) to its first generated token.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)


class GenerationRecorder:
    """The metrics of one generation call, fed with the engine's updates as they pass by."""

    def __init__(self, model_id: str, request: GenerationRequest) -> None:
        self._model = model_id
        self._started = time.monotonic()
        self._unfinished = set(range(request.n))
        self._first_token_seen = False
        PROMPT_TOKENS.labels(model_id).inc(len(request.prompt_ids))

    def update(self, update: SequenceUpdate) -> None:
        if update.token_ids:
            GENERATED_TOKENS.labels(self._model).inc(len(update.token_ids))
            if not self._first_token_seen:
                self._first_token_seen = True
                TIME_TO_FIRST_TOKEN.labels(self._model).observe(time.monotonic() - self._started)
        if update.finish is not None:
            self._unfinished.discard(update.index)
            SEQUENCES_FINISHED.labels(self._model, update.finish.reason.value).inc()

    def close(self) -> None:
        """Counts the sequences that never finished as aborted. Idempotent."""
        if self._unfinished:
            SEQUENCES_FINISHED.labels(self._model, ABORTED).inc(len(self._unfinished))
            self._unfinished.clear()


class EngineLoadCollector(Collector):
    """Queue length, running batch, KV cache and step totals of every generation engine, read at
    scrape time. rate(step_seconds) / rate(steps) is the mean step time; forward_seconds the part
    of it in the model; rate(prefix_cache_hit_tokens) / rate(prefix_cache_queried_tokens) the
    share of prompt tokens the prefix cache served."""

    def __init__(self, models: ModelRegistry) -> None:
        self._models = models

    def collect(self) -> Iterator[Metric]:
        gauges = {
            name: GaugeMetricFamily(f"tokenwire_engine_{name}", help_text, labels=["model"])
            for name, help_text in (
                ("waiting_requests", "Queue length: requests submitted and waiting for room in the running batch."),
                ("running_sequences", "Running batch: sequences being generated."),
                ("kv_cache_usage", "Share of the KV cache's blocks held by running sequences (0-1)."),
                ("kv_cache_capacity_tokens", "Tokens the KV cache holds: its blocks times their size."),
                ("kv_cache_held_tokens",
                 "Token positions the running sequences fill in the KV cache (shared blocks once)."),
            )
        }
        totals = {
            name: CounterMetricFamily(f"tokenwire_engine_{name}", help_text, labels=["model"])
            for name, help_text in (
                ("steps", "Engine steps (one forward pass each)."),
                ("step_tokens", "Tokens run through the model: decode tokens and prompt chunks."),
                ("forward_seconds", "Time in the model's forward passes."),
                ("step_seconds", "Time in whole steps: forward, sampling, emitting."),
                ("prefix_cache_queried_tokens", "Prompt tokens of admitted requests looked up in the prefix cache."),
                ("prefix_cache_hit_tokens", "Prompt tokens the prefix cache served (not computed again)."),
                ("preemptions", "Sequences preempted (their blocks freed, to be recomputed) for room."),
            )
        }
        for model in self._models.all():
            if isinstance(model, GenerationModel):
                labels = [model.card.model_id]
                engine = model.engine
                kv_cache, stats = engine.kv_cache, engine.stats
                for name, value in (
                    ("waiting_requests", engine.waiting_count),
                    ("running_sequences", engine.running_count),
                    ("kv_cache_usage", kv_cache.usage),
                    ("kv_cache_capacity_tokens", kv_cache.blocks * kv_cache.block_size),
                    ("kv_cache_held_tokens", kv_cache.held_tokens),
                ):
                    gauges[name].add_metric(labels, value)
                for name, value in (
                    ("steps", stats.steps),
                    ("step_tokens", stats.tokens),
                    ("forward_seconds", stats.forward_seconds),
                    ("step_seconds", stats.step_seconds),
                    ("prefix_cache_queried_tokens", stats.prefix_queried_tokens),
                    ("prefix_cache_hit_tokens", stats.prefix_hit_tokens),
                    ("preemptions", stats.preemptions),
                ):
                    totals[name].add_metric(labels, value)
        yield from gauges.values()
        yield from totals.values()


def serve_metrics(host: str, port: int, models: ModelRegistry) -> Callable[[], None]:
    """Serves /metrics over HTTP on host:port in a background thread; returns its stop function."""
    server, thread = start_http_server(port, addr=host.strip("[]"), registry=REGISTRY)
    collector = EngineLoadCollector(models)
    REGISTRY.register(collector)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        REGISTRY.unregister(collector)

    return stop
