"""Worker settings: command-line flags, each with a TOKENWIRE_* environment variable default,
checked before anything is loaded."""
from __future__ import annotations

import argparse
import math
import pathlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from service.models.packaged import DEFAULT_EMBEDDING_MODEL, DEFAULT_GENERATION_MODEL
from service.models.reference import REFERENCE_MODELS
from service.models.sources import parse_spec
from service.models.weights import has_weights
from tokenwire.api_keys import add_api_key_argument
from tokenwire.limits import DEFAULT_MAX_RUNNING
from tokenwire.startup import StartupError, add_repeatable, env, port, seconds, whole_number
from tokenwire.tracing import add_tracing_argument


def default_cache_dir() -> pathlib.Path:
    """The worker's --cache-dir default: converted weights and built kernels go there."""
    return pathlib.Path(env("CACHE_DIR", str(pathlib.Path.home() / ".cache" / "tokenwire")))


DEFAULT_CPU_KV_CACHE_GIB = 2
DEFAULT_CPU_KV_CACHE_SHARE = 0.1
DEFAULT_CUDA_KV_CACHE_FRACTION = 0.9
_MEMORY_BUDGET_FORMS = "auto, bytes (e.g. 4GiB, 512MiB) or a fraction of free device memory (e.g. 0.9)"
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


@dataclass(frozen=True)
class MemoryBudget:
    """--kv-cache-memory: a number of bytes, a fraction of free device memory, or auto."""

    bytes: int | None = None
    fraction: float | None = None


def parse_memory_budget(spec: str) -> MemoryBudget:
    """`auto`, a fraction in (0, 1] (`0.9`), or bytes with an optional unit (`4GiB`, `512M`, `2e9`)."""
    text = spec.strip().lower()
    if text == "auto":
        return MemoryBudget()
    match = re.fullmatch(r"([0-9.e+]+)\s*([kmgt]i?)?b?", text)
    try:
        value = float(match.group(1)) if match else math.nan
    except ValueError:
        value = math.nan
    if match and math.isfinite(value) and value > 0:
        if match.group(2) is None and value <= 1:
            return MemoryBudget(fraction=value)
        size = value * _UNITS[match.group(2) or ""]
        if size >= 1:
            return MemoryBudget(bytes=int(size))
    raise ValueError(f"--kv-cache-memory {spec!r}: expected {_MEMORY_BUDGET_FORMS}")


def _memory_budget(spec: str) -> MemoryBudget:
    """parse_memory_budget as an argparse type."""
    try:
        return parse_memory_budget(spec)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {_MEMORY_BUDGET_FORMS}, got {spec!r}") from None


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
            "expected MODEL_ID=INPUT,OUTPUT with two non-negative numbers (USD per million tokens), "
            "e.g. my-org/llama=0.03,0.05"
        )
    return model_id, Price(values[0], values[1])


def add_worker_arguments(parser: argparse.ArgumentParser, metrics_port: int = 0) -> None:
    """The worker's flags; `metrics_port` is the default of --metrics-port (0 = no metrics)."""
    group = parser.add_argument_group("worker")
    group.add_argument("--grpc-host", default=env("GRPC_HOST", "127.0.0.1"))
    group.add_argument("--grpc-port", type=port, default=env("GRPC_PORT", "50051"))
    group.add_argument(
        "--metrics-port",
        type=port,
        default=env("METRICS_PORT", str(metrics_port)),
        help="serve the worker's Prometheus metrics over HTTP on this port, on --grpc-host; "
        "0 = off (env TOKENWIRE_METRICS_PORT; default %(default)s)",
    )
    add_api_key_argument(group)
    add_repeatable(
        group,
        "--price",
        dest="prices",
        variable="PRICES",
        metavar="MODEL_ID=INPUT,OUTPUT",
        help="USD per million prompt (INPUT) and completion (OUTPUT) tokens of a served model, "
        "for usage.estimated_cost; default 0",
        separator=";",
    )
    for flag, variable, what in (
        ("--model", "MODELS", "generation model to serve: a HF directory, a .gguf file or a packaged model id"),
        ("--embedding-model", "EMBEDDING_MODELS", "embedding model to serve: a sentence-transformers directory"),
    ):
        add_repeatable(group, flag, dest=variable.lower(), variable=variable, metavar="[ID=]PATH", help=what)
    group.add_argument(
        "--load-format",
        choices=("auto", "dummy"),
        default=env("LOAD_FORMAT", "auto"),
        help="dummy: generation models get seeded random weights built from their config.json alone, "
        "for measuring speed at a real shape (a directory with a config.json, or a reference model id: "
        f"{', '.join(REFERENCE_MODELS)})",
    )
    group.add_argument(
        "--no-default-models",
        action="store_true",
        default=env("NO_DEFAULT_MODELS", "") == "1",
        help="serve only the models named by flags",
    )
    group.add_argument("--device", default=env("DEVICE", "auto"), help="auto, cpu, cuda or cuda:N")
    group.add_argument("--dtype", choices=("auto", "bfloat16", "float16", "float32"), default=env("DTYPE", "auto"))
    group.add_argument(
        "--threads",
        type=whole_number(0),
        default=env("THREADS", "0"),
        help="CPU threads for tensor operations (0: all cores but one)",
    )
    group.add_argument(
        "--quantization",
        choices=("auto", "none", "int8", "int4"),
        default=env("QUANTIZATION", "auto"),
        help="weights kept in 4 or 8 bits for CPU decoding (int8 also quantizes activations per row); "
        "auto: a GGUF's own precision on CPU, none elsewhere",
    )
    group.add_argument(
        "--cache-dir",
        type=pathlib.Path,
        default=default_cache_dir(),
        help="where converted weights and compiled kernels are kept",
    )
    group.add_argument("--max-running", type=whole_number(1), default=env("MAX_RUNNING", str(DEFAULT_MAX_RUNNING)),
                       help="sequences generated at once per model")
    group.add_argument(
        "--kv-cache-memory",
        type=_memory_budget,
        default=env("KV_CACHE_MEMORY", "auto"),
        metavar="BYTES|FRACTION",
        help="KV-cache memory per generation model: bytes (e.g. 4GiB, 512MiB, 2000000000), or on CUDA a "
        "fraction of the device memory left free by the weights (e.g. 0.9); auto: "
        f"min({DEFAULT_CPU_KV_CACHE_GIB} GiB, {DEFAULT_CPU_KV_CACHE_SHARE * 100:.0f}%% of RAM) on CPU, "
        f"{DEFAULT_CUDA_KV_CACHE_FRACTION} on CUDA",
    )
    group.add_argument(
        "--no-prefix-caching",
        dest="prefix_caching",
        action="store_false",
        default=env("PREFIX_CACHING", "1") != "0",
        help="do not keep computed KV-cache blocks for reuse by later requests with the same prefix "
        "(env TOKENWIRE_PREFIX_CACHING=0)",
    )
    group.add_argument("--max-waiting", type=whole_number(0), default=env("MAX_WAITING", "256"),
                       help="requests queued per model before RESOURCE_EXHAUSTED")
    group.add_argument("--shutdown-grace", type=seconds, default=env("SHUTDOWN_GRACE", "10"),
                       help="seconds in-flight calls may finish after SIGTERM")
    add_tracing_argument(group)


# The settings that are their flag's value as parsed.
_FLAGS_AS_THEY_ARE = (
    "grpc_host", "grpc_port", "metrics_port", "device", "dtype", "quantization", "threads", "cache_dir",
    "max_running", "max_waiting", "kv_cache_memory", "prefix_caching", "otlp_endpoint", "load_format",
)


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
    kv_cache_memory: MemoryBudget = MemoryBudget()
    prefix_caching: bool = True
    load_format: Literal["auto", "dummy"] = "auto"
    metrics_port: int = 0
    api_keys: tuple[str, ...] = ()
    prices: Mapping[str, Price] = field(default_factory=dict)
    otlp_endpoint: str | None = None

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
            **{name: getattr(args, name) for name in _FLAGS_AS_THEY_ARE},
            generation_models=tuple(generation),
            embedding_models=tuple(embedding),
            shutdown_grace_s=args.shutdown_grace,
            api_keys=tuple(args.api_keys),
            prices=dict(parse_price(spec) for spec in args.prices),
        )

    def model_flags(self) -> list[tuple[str, str]]:
        """(flag, spec) of every model to serve, generation models first."""
        return [("--model", spec) for spec in self.generation_models] + [
            ("--embedding-model", spec) for spec in self.embedding_models
        ]


def _load_format_problem(path: pathlib.Path, load_format: str) -> str | None:
    """Why a generation model at `path` cannot load in `load_format` (None when it can)."""
    if load_format == "dummy":
        return None if (path / "config.json").is_file() else "--load-format dummy needs a directory with a config.json"
    if not has_weights(path):
        return "has no weight files (--load-format dummy serves its config with random weights)"
    return None


def checked_settings(args: argparse.Namespace) -> WorkerSettings:
    """The worker's settings, with everything that needs neither torch nor a model checked first:
    prices, model paths, prices of models not served. Raises StartupError."""
    for spec in args.prices:
        try:
            parse_price(spec)
        except ValueError as error:
            raise StartupError(f"--price {spec}", str(error)) from None
    settings = WorkerSettings.from_args(args)
    served = set()
    for flag, spec in settings.model_flags():
        try:
            source = parse_spec(spec)
        except FileNotFoundError as error:
            raise StartupError(f"{flag} {spec}", str(error)) from None
        if flag == "--model" and (problem := _load_format_problem(source.path, settings.load_format)):
            raise StartupError(f"{flag} {spec}", problem)
        served.add(source.model_id)
    for spec in args.prices:
        model_id, _ = parse_price(spec)
        if model_id not in served:
            raise StartupError(f"--price {spec}", f"{model_id} is not served here")
    return settings
