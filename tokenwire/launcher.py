"""`tokenwire serve`: a worker process and a bridge process, supervised together.

Each runs in its own process (the worker's forward passes never share a GIL with the bridge's
event loop). The URLs are printed once the bridge reports healthy, which it does only when the
worker is serving. Until then, a process that exits stops `serve` (a port in use, a model that
does not load). Afterwards, one that dies is restarted after a backoff, and the log says why and
when; meanwhile the bridge answers 503 with Retry-After.

SIGTERM or Ctrl-C drains: first the bridge, which stops taking connections and finishes the
requests it has (the worker still serves them), then the worker, which finishes the calls of its
own gRPC clients. Each has the worker's --shutdown-grace to do so.

The launcher itself never imports torch: only the worker process does.
"""
from __future__ import annotations

import argparse
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess

from rest_bridge.config import BridgeSettings
from service.config import checked_settings
from tokenwire.startup import one_line_errors

log = logging.getLogger("tokenwire.serve")

_STARTUP_TIMEOUT_S = 900.0
# A dead process is restarted after 1 s, then 2, 4… up to 30 s while it keeps dying; one that ran
# for a minute starts over at 1 s.
_BACKOFF_INITIAL_S = 1.0
_BACKOFF_MAX_S = 30.0
_STABLE_AFTER_S = 60.0
# Beyond the grace period: the worker's flush of aborted generations, and process exit.
_STOP_MARGIN_S = 10.0
_POLL_S = 0.5
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


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


def _child_main(target: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> None:
    """A child's entry point. In a process group of its own, a terminal's Ctrl-C reaches only the
    launcher, which stops the children in order; on Linux the child gets SIGTERM (and drains) if
    the launcher dies, so none is left behind."""
    os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    target(args)


def _worker(args: argparse.Namespace) -> None:
    from service.server import run_worker

    run_worker(args)


def _bridge(args: argparse.Namespace) -> None:
    from rest_bridge.app import run_bridge

    run_bridge(args)


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"was killed by {signal.Signals(-exitcode).name}"
    return f"exited with status {exitcode}"


@dataclass
class _Child:
    """One supervised process, restarted with backoff while it keeps dying."""

    name: str
    target: Callable[[argparse.Namespace], None]
    process: BaseProcess | None = None
    started: float = 0.0
    restarts: int = 0
    failures_in_a_row: int = 0
    restart_at: float | None = None

    def start(self, args: argparse.Namespace) -> None:
        context = multiprocessing.get_context("spawn")
        self.process = context.Process(target=_child_main, args=(self.target, args), name=f"tokenwire-{self.name}")
        self.process.start()
        self.started = time.monotonic()
        self.restart_at = None
        log.info("started the %s (pid %d)", self.name, self.process.pid)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def supervise(self, args: argparse.Namespace) -> None:
        """Schedules a restart of a process that died, and restarts it once its backoff is over."""
        if self.alive:
            return
        now = time.monotonic()
        if self.restart_at is None:
            assert self.process is not None
            ran_for = now - self.started
            self.failures_in_a_row = 1 if ran_for >= _STABLE_AFTER_S else self.failures_in_a_row + 1
            delay = min(_BACKOFF_MAX_S, _BACKOFF_INITIAL_S * 2 ** (self.failures_in_a_row - 1))
            self.restart_at = now + delay
            log.warning(
                "the %s (pid %d) %s after %.0f s; restarting it in %.0f s",
                self.name, self.process.pid, _exit_reason(self.process.exitcode), ran_for, delay,
            )
        elif now >= self.restart_at:
            self.restarts += 1
            log.warning("restarting the %s (restart %d)", self.name, self.restarts)
            self.start(args)

    def stop(self) -> None:
        """SIGTERM: the process drains."""
        if self.alive:
            assert self.process is not None
            self.process.terminate()

    def wait(self, timeout: float) -> None:
        if self.process is not None:
            self.process.join(timeout)

    def kill(self) -> None:
        if self.alive:
            assert self.process is not None
            log.warning("the %s did not stop in time: killing it", self.name)
            self.process.kill()
            self.process.join()


def _drain(bridge: _Child, worker: _Child, grace_s: float) -> None:
    bridge.stop()
    bridge.wait(grace_s)
    worker.stop()
    for child in (bridge, worker):
        child.wait(grace_s + _STOP_MARGIN_S)
        child.kill()


def run_stack(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A bad flag stops `serve` before either process starts.
    with one_line_errors("worker"):
        settings = checked_settings(args)
    BridgeSettings.from_args(args)
    worker, bridge = _Child("worker", _worker), _Child("bridge", _bridge)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    for child in (worker, bridge):
        child.start(args)

    health_url = f"http://{args.http_host}:{args.http_port}/health"
    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    status = 0
    while not stopping.is_set() and not _healthy(health_url):
        failed = next((child for child in (worker, bridge) if not child.alive), None)
        if failed is not None or time.monotonic() > deadline:
            if failed is not None:
                assert failed.process is not None
                log.error("the %s %s before tokenwire was ready", failed.name, _exit_reason(failed.process.exitcode))
            else:
                log.error("tokenwire did not become ready in %.0f s", _STARTUP_TIMEOUT_S)
            stopping.set()
            status = 1
        stopping.wait(_POLL_S)
    if not stopping.is_set():
        print(_banner(args), flush=True)
    down_since: float | None = None  # since a process died, until the stack serves again
    while not stopping.is_set():
        for child in (worker, bridge):
            if not child.alive and down_since is None:
                down_since = time.monotonic()
            child.supervise(args)
        if down_since is not None and worker.alive and bridge.alive and _healthy(health_url):
            log.info("tokenwire serves again, %.0f s after a process died", time.monotonic() - down_since)
            down_since = None
        stopping.wait(_POLL_S)

    log.info("stopping: the bridge, then the worker, drain for up to %.0f s each", settings.shutdown_grace_s)
    _drain(bridge, worker, settings.shutdown_grace_s)
    return status
