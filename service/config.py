"""Worker settings: command-line flags, each with a TOKENWIRE_* environment variable default."""
from __future__ import annotations

import argparse
import math
import os
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from service.models.packaged import DEFAULT_EMBEDDING_MODEL, DEFAULT_GENERATION_MODEL
from tokenwire.api_keys import add_api_key_argument


def _env(name: str, default: str) -> str:
    return os.environ.get(f"TOKENWIRE_{name}", default)


def default_cache_dir() -> pathlib.Path:
    """The worker's --cache-dir default: converted weights and built kernels go there."""
    return pathlib.Path(_env("CACHE_DIR", str(pathlib.Path.home() / ".cache" / "tokenwire")))


def _env_list(name: str) -> list[str]:
    return [item for item in _env(name, "").split(",") if item]


@dataclass(frozen=True)
class Price:
    """USD per million tokens, for usage.estimated_cost."""

    input_per_million: float = 0.0
    output_per_million: float = 0.0


def parse_price(spec: str) -> tuple[str, Price]:
    """`MODEL_ID=INPUT,OUTPUT` (USD per million prompt and completion tokens)."""
    model_id, _, prices = spec.partition("=")
    try:
        values = [float(value) for value in prices.split(",")]
    except ValueError:
        values = []
    if not model_id or len(values) != 2 or not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(
            f"--price {spec!r}: expected MODEL_ID=INPUT,OUTPUT with two non-negative numbers "
            "(USD per million tokens), e.g. my-org/llama=0.03,0.05"
        )
    return model_id, Price(values[0], values[1])


def add_worker_arguments(parser: argparse.ArgumentParser, metrics_port: int = 0) -> None:
    """The worker's flags; `metrics_port` is the default of --metrics-port (0 = no metrics)."""
    group = parser.add_argument_group("worker")
    group.add_argument("--grpc-host", default=_env("GRPC_HOST", "127.0.0.1"))
    group.add_argument("--grpc-port", type=int, default=int(_env("GRPC_PORT", "50051")))
    group.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("METRICS_PORT", str(metrics_port))),
        help="serve the worker's Prometheus metrics over HTTP on this port, on --grpc-host; "
        "0 = off (env TOKENWIRE_METRICS_PORT; default %(default)s)",
    )
    add_api_key_argument(group)
    group.add_argument(
        "--price",
        action="append",
        dest="prices",
        default=[item for item in _env("PRICES", "").split(";") if item],
        metavar="MODEL_ID=INPUT,OUTPUT",
        help="USD per million prompt (INPUT) and completion (OUTPUT) tokens of a served model, "
        "for usage.estimated_cost; default 0 (repeatable; env TOKENWIRE_PRICES, ';'-separated)",
    )
    group.add_argument(
        "--model",
        action="append",
        dest="models",
        default=_env_list("MODELS"),
        metavar="[ID=]PATH",
        help="generation model to serve: a HF directory, a .gguf file or a packaged model id "
        "(repeatable; env TOKENWIRE_MODELS, comma-separated)",
    )
    group.add_argument(
        "--embedding-model",
        action="append",
        dest="embedding_models",
        default=_env_list("EMBEDDING_MODELS"),
        metavar="[ID=]PATH",
        help="embedding model to serve (repeatable; env TOKENWIRE_EMBEDDING_MODELS)",
    )
    group.add_argument(
        "--no-default-models",
        action="store_true",
        default=_env("NO_DEFAULT_MODELS", "") == "1",
        help="serve only the models named by flags",
    )
    group.add_argument("--device", default=_env("DEVICE", "auto"), help="auto, cpu, cuda or cuda:N")
    group.add_argument(
        "--dtype", default=_env("DTYPE", "auto"), help="auto, bfloat16, float16 or float32"
    )
    group.add_argument(
        "--threads",
        type=int,
        default=int(_env("THREADS", "0")),
        help="CPU threads for tensor operations (0: all cores but one)",
    )
    group.add_argument(
        "--quantization",
        choices=("auto", "none", "int8", "int4"),
        default=_env("QUANTIZATION", "auto"),
        help="weights kept in 4 or 8 bits for CPU decoding (int8 also quantizes activations per row); "
        "auto: a GGUF's own precision on CPU, none elsewhere",
    )
    group.add_argument(
        "--cache-dir",
        type=pathlib.Path,
        default=default_cache_dir(),
        help="where converted weights and compiled kernels are kept",
    )
    group.add_argument("--max-running", type=int, default=int(_env("MAX_RUNNING", "16")),
                       help="sequences generated at once per model")
    group.add_argument("--max-waiting", type=int, default=int(_env("MAX_WAITING", "256")),
                       help="requests queued per model before RESOURCE_EXHAUSTED")
    group.add_argument("--shutdown-grace", type=float, default=float(_env("SHUTDOWN_GRACE", "10")),
                       help="seconds in-flight calls may finish after SIGTERM")


@dataclass(frozen=True)
class WorkerSettings:
    grpc_host: str
    grpc_port: int
    generation_models: tuple[str, ...]
    embedding_models: tuple[str, ...]
    device: str
    dtype: str
    quantization: str
    threads: int
    cache_dir: pathlib.Path
    max_running: int
    max_waiting: int
    shutdown_grace_s: float
    metrics_port: int = 0
    api_keys: tuple[str, ...] = ()
    prices: Mapping[str, Price] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{self.grpc_host}:{self.grpc_port}"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> WorkerSettings:
        generation, embedding = list(args.models), list(args.embedding_models)
        if not args.no_default_models:
            generation = generation or [DEFAULT_GENERATION_MODEL.model_id]
            embedding = embedding or [DEFAULT_EMBEDDING_MODEL.model_id]
        return cls(
            grpc_host=args.grpc_host,
            grpc_port=args.grpc_port,
            generation_models=tuple(generation),
            embedding_models=tuple(embedding),
            device=args.device,
            dtype=args.dtype,
            quantization=args.quantization,
            threads=args.threads,
            cache_dir=args.cache_dir,
            max_running=args.max_running,
            max_waiting=args.max_waiting,
            shutdown_grace_s=args.shutdown_grace,
            metrics_port=args.metrics_port,
            api_keys=tuple(args.api_keys),
            prices=dict(parse_price(spec) for spec in args.prices),
        )
