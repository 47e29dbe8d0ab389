"""Command-line flags and settings of the bridge."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}


def add_bridge_arguments(parser: argparse.ArgumentParser, worker_address_flag: bool = True) -> None:
    """Adds the bridge's flags; `tokenwire serve` leaves out --worker-address (it knows the worker)."""
    group = parser.add_argument_group("REST bridge")
    group.add_argument(
        "--http-host",
        default=os.environ.get("TOKENWIRE_HTTP_HOST", "127.0.0.1"),
        help="address the REST API listens on (env TOKENWIRE_HTTP_HOST; default %(default)s)",
    )
    group.add_argument(
        "--http-port",
        type=int,
        default=os.environ.get("TOKENWIRE_HTTP_PORT", "8000"),
        help="port of the REST API (env TOKENWIRE_HTTP_PORT; default %(default)s)",
    )
    group.add_argument(
        "--request-timeout",
        type=float,
        default=os.environ.get("TOKENWIRE_REQUEST_TIMEOUT", "600"),
        help="gRPC deadline of one request in seconds, 0 for none "
        "(env TOKENWIRE_REQUEST_TIMEOUT; default %(default)s)",
    )
    if worker_address_flag:
        group.add_argument(
            "--worker-address",
            default=os.environ.get("TOKENWIRE_WORKER_ADDRESS", "127.0.0.1:50051"),
            help="host:port of the gRPC worker (env TOKENWIRE_WORKER_ADDRESS; default %(default)s)",
        )


def _connect_host(host: str) -> str:
    """The host to dial for a listen address: wildcards become loopback, IPv6 gets brackets."""
    if host in _WILDCARD_HOSTS:
        return "127.0.0.1"
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


@dataclass(frozen=True)
class BridgeSettings:
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    worker_address: str = "127.0.0.1:50051"
    # Seconds; None means no deadline.
    request_timeout: float | None = 600.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BridgeSettings:
        worker_address = getattr(args, "worker_address", None)
        if worker_address is None:
            worker_address = f"{_connect_host(args.grpc_host)}:{args.grpc_port}"
        timeout = float(args.request_timeout)
        return cls(
            http_host=args.http_host,
            http_port=int(args.http_port),
            worker_address=worker_address,
            request_timeout=timeout if timeout > 0 else None,
        )
