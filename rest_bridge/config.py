"""Command-line flags and settings of the bridge."""
from __future__ import annotations

import argparse
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rest_bridge.store import default_data_dir
from tokenwire.api_keys import add_api_key_argument
from tokenwire.limits import DEFAULT_MAX_RUNNING
from tokenwire.startup import add_repeatable, env, port, seconds, whole_number
from tokenwire.tracing import add_tracing_argument

# Batch API lines in flight at most: enough to keep the worker's batch busy, and fewer than its
# sequences (--max-running), so that interactive requests find room at once.
DEFAULT_BATCH_CONCURRENCY = DEFAULT_MAX_RUNNING // 2

_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}
# The default deadline of metadata calls (health, model cards), whatever the generation deadline: a
# worker answers them at once, so one that has not answered within this is stuck, and the client
# hears so now, not after the request timeout.
METADATA_TIMEOUT_S = 5.0


def _add(group: argparse._ArgumentGroup, flag: str, default: str, help: str, **options: Any) -> None:
    """A flag whose default comes from the TOKENWIRE_* variable named after it."""
    name = flag.removeprefix("--").replace("-", "_").upper()
    help = f"{help} (env TOKENWIRE_{name}; default %(default)s)"
    group.add_argument(flag, default=env(name, default), help=help, **options)


def add_bridge_arguments(parser: argparse.ArgumentParser, standalone: bool = True) -> None:
    """Adds the bridge's flags. `tokenwire serve` (standalone=False) leaves out the worker's address
    and key, which it knows, and --api-key and --otlp-endpoint, which the worker's flags already
    have."""
    group = parser.add_argument_group("REST bridge")
    _add(group, "--http-host", "127.0.0.1", "address the REST API listens on")
    _add(group, "--http-port", "8000", "port of the REST API", type=port)
    _add(group, "--request-timeout", "600", "gRPC deadline of one request in seconds, 0 for none", type=seconds)
    _add(
        group,
        "--metadata-timeout",
        str(METADATA_TIMEOUT_S),
        "gRPC deadline in seconds of /health and the model list, which a worker answers at once",
        type=seconds,
    )
    add_repeatable(
        group,
        "--worker",
        dest="model_workers",
        variable="WORKERS",
        metavar="MODEL=ADDRESS",
        help="send the requests for MODEL to the worker (or Envoy) at host:port ADDRESS; other "
        "models go to the default worker",
    )
    group.add_argument(
        "--data-dir",
        type=pathlib.Path,
        default=env("DATA_DIR", "") or default_data_dir(),
        help="where the bridge keeps files, batches and stored responses, in a SQLite database "
        "(env TOKENWIRE_DATA_DIR; default %(default)s)",
    )
    _add(
        group,
        "--batch-concurrency",
        str(DEFAULT_BATCH_CONCURRENCY),
        "Batch API lines sent to the worker at once, over all batches; keep it below the worker's "
        "--max-running so interactive requests find room",
        type=whole_number(1),
    )
    if standalone:
        _add(group, "--worker-address", "127.0.0.1:50051", "host:port of the gRPC worker")
        group.add_argument(
            "--worker-api-key",
            default=env("WORKER_API_KEY", "") or None,
            metavar="KEY",
            help="API key sent to the worker as `authorization: Bearer KEY` metadata "
            "(env TOKENWIRE_WORKER_API_KEY; default: none)",
        )
        add_api_key_argument(group)
        add_tracing_argument(group)


def _connect_host(host: str) -> str:
    """The host to dial for a listen address: wildcards become loopback, IPv6 gets brackets."""
    if host in _WILDCARD_HOSTS:
        return "127.0.0.1"
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def parse_model_worker(spec: str) -> tuple[str, str]:
    """`MODEL=HOST:PORT` of --worker."""
    model, _, address = spec.partition("=")
    host, _, port = address.rpartition(":")
    if not model or not host or not port.isdigit():
        raise ValueError(f"--worker {spec!r}: expected MODEL=HOST:PORT, e.g. my-org/embedder=10.0.0.2:50051")
    return model, address


@dataclass(frozen=True)
class BridgeSettings:
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    worker_address: str = "127.0.0.1:50051"
    # Seconds; None means no deadline.
    request_timeout: float | None = 600.0
    metadata_timeout: float = METADATA_TIMEOUT_S
    # Keys REST clients must send; empty means no authentication.
    api_keys: tuple[str, ...] = ()
    # The key the bridge sends to the worker, if the worker wants one.
    worker_api_key: str | None = None
    # Models served elsewhere than `worker_address`: model id -> host:port.
    model_workers: Mapping[str, str] = field(default_factory=dict)
    # Where traces go (OTLP/gRPC); None: no tracing.
    otlp_endpoint: str | None = None
    data_dir: pathlib.Path = field(default_factory=default_data_dir)
    batch_concurrency: int = DEFAULT_BATCH_CONCURRENCY

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BridgeSettings:
        """The settings of the flags; a bad flag is a one-line SystemExit."""
        try:
            model_workers = dict(parse_model_worker(spec) for spec in args.model_workers)
        except ValueError as error:
            raise SystemExit(f"tokenwire bridge: {error}") from None
        api_keys = tuple(args.api_keys)
        if hasattr(args, "worker_address"):
            worker_address, worker_api_key = args.worker_address, args.worker_api_key
        else:  # `tokenwire serve`: its own worker, which takes the same keys
            worker_address = f"{_connect_host(args.grpc_host)}:{args.grpc_port}"
            worker_api_key = api_keys[0] if api_keys else None
        return cls(
            http_host=args.http_host,
            http_port=args.http_port,
            worker_address=worker_address,
            request_timeout=args.request_timeout or None,
            metadata_timeout=args.metadata_timeout,
            api_keys=api_keys,
            worker_api_key=worker_api_key,
            model_workers=model_workers,
            otlp_endpoint=args.otlp_endpoint,
            data_dir=pathlib.Path(args.data_dir),
            batch_concurrency=int(args.batch_concurrency),
        )
