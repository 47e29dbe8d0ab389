"""Worker settings: command-line flags, each with a TOKENWIRE_* environment variable default."""
from __future__ import annotations

import argparse
import os
import pathlib
from dataclasses import dataclass

from service.models.packaged import DEFAULT_EMBEDDING_MODEL, DEFAULT_GENERATION_MODEL


def _env(name: str, default: str) -> str:
    return os.environ.get(f"TOKENWIRE_{name}", default)


def _env_list(name: str) -> list[str]:
    return [item for item in _env(name, "").split(",") if item]


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("worker")
    group.add_argument("--grpc-host", default=_env("GRPC_HOST", "127.0.0.1"))
    group.add_argument("--grpc-port", type=int, default=int(_env("GRPC_PORT", "50051")))
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
        "--cache-dir",
        type=pathlib.Path,
        default=pathlib.Path(_env("CACHE_DIR", str(pathlib.Path.home() / ".cache" / "tokenwire"))),
        help="where converted weights are kept",
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
    cache_dir: pathlib.Path
    max_running: int
    max_waiting: int
    shutdown_grace_s: float

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
            cache_dir=args.cache_dir,
            max_running=args.max_running,
            max_waiting=args.max_waiting,
            shutdown_grace_s=args.shutdown_grace,
        )
