"""`tokenwire serve`: a worker process and a bridge process, supervised together.

Each runs in its own process (the worker's forward passes never share a GIL with the bridge's
event loop). The URLs are printed once the bridge reports healthy, which it does only when the
worker is serving. If either process exits, the other is stopped too.
"""
from __future__ import annotations

import argparse
import multiprocessing
import signal
import time
import urllib.error
import urllib.request
from multiprocessing.process import BaseProcess

_STARTUP_TIMEOUT_S = 900.0


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(processes: list[BaseProcess]) -> None:
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()


def _banner(args: argparse.Namespace) -> str:
    """What `tokenwire serve` prints once both processes are ready."""
    lines = [
        "",
        "tokenwire is ready",
        f"  Playground:      http://{args.http_host}:{args.http_port}/",
        f"  OpenAI REST API: http://{args.http_host}:{args.http_port}/v1",
        f"  gRPC API:        {args.grpc_host}:{args.grpc_port}",
        f"  Metrics:         http://{args.http_host}:{args.http_port}/metrics (bridge)",
    ]
    if args.metrics_port:
        lines.append(f"                   http://{args.grpc_host}:{args.metrics_port}/metrics (worker)")
    if args.api_keys:
        lines.append("  API keys:        required (Authorization: Bearer KEY)")
    return "\n".join(lines) + "\n"


def run_stack(args: argparse.Namespace) -> int:
    from rest_bridge.app import run_bridge
    from service.server import checked_settings, run_worker

    checked_settings(args)  # a bad worker flag stops `serve` before either process starts
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=run_worker, args=(args,), name="tokenwire-worker"),
        context.Process(target=run_bridge, args=(args,), name="tokenwire-bridge"),
    ]
    for process in processes:
        process.start()
    signal.signal(signal.SIGTERM, lambda *_: _stop(processes))
    health_url = f"http://{args.http_host}:{args.http_port}/health"
    announced = False
    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    try:
        while all(p.is_alive() for p in processes):
            if not announced and _healthy(health_url):
                announced = True
                print(_banner(args), flush=True)
            if not announced and time.monotonic() > deadline:
                print("tokenwire did not become ready in time", flush=True)
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    _stop(processes)
    return max((p.exitcode or 0) for p in processes)
