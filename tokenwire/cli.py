"""The `tokenwire` command: `worker` (gRPC, torch), `bridge` (OpenAI REST) and `serve` (both).

Subcommands import their packages lazily: `tokenwire bridge` never imports torch, and
`tokenwire serve` leaves it to its worker process.
"""
from __future__ import annotations

import sys

from tokenwire.startup import OneLineErrorParser

# `tokenwire serve` exposes the worker's metrics by default (a lone worker does not).
SERVE_METRICS_PORT = 9400


def main(argv: list[str] | None = None) -> None:
    parser = OneLineErrorParser(prog="tokenwire", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="serve the gRPC API from a torch worker")
    bridge = commands.add_parser("bridge", help="serve the OpenAI REST API over a gRPC worker")
    serve = commands.add_parser("serve", help="run a worker and a bridge until interrupted")

    from rest_bridge.config import add_bridge_arguments
    from service.config import add_worker_arguments

    add_worker_arguments(worker)
    add_bridge_arguments(bridge)
    add_worker_arguments(serve, metrics_port=SERVE_METRICS_PORT)
    add_bridge_arguments(serve, standalone=False)
    args = parser.parse_args(argv)

    if args.command == "worker":
        from service.server import run_worker

        run_worker(args)
    elif args.command == "bridge":
        from rest_bridge.app import run_bridge

        run_bridge(args)
    else:
        from tokenwire.launcher import run_stack

        sys.exit(run_stack(args))


if __name__ == "__main__":
    main()
