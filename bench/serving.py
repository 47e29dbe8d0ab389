"""Generation side by side: the shared load generator against each running server, alternating
servers within every round, and the per-round figures reduced to medians."""
from __future__ import annotations

import json
import pathlib
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from bench.servers import RunningServer

DEFAULT_LOADGEN = pathlib.Path(__file__).resolve().parents[2] / "shared" / "bench" / "loadgen.py"
# Figures loadgen reports per run, each reduced to its median over the rounds.
METRICS = ("tok_per_s", "ttft_p50_ms", "ttft_p95_ms", "itl_p50_ms", "itl_p95_ms")
_LOADGEN_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Load:
    """`concurrency` clients, each sending `requests` streaming chat requests one after another."""

    concurrency: int
    requests: int

    @classmethod
    def parse(cls, text: str) -> Load:
        """`16x2` is 16 clients × 2 requests each."""
        concurrency, _, requests = text.partition("x")
        return cls(int(concurrency), int(requests or 1))


@dataclass(frozen=True)
class Run:
    server: str
    load: Load
    round: int
    # loadgen's --json output: requests, errors, wall_s, output_tokens, tok_per_s, ttft_*, itl_*.
    figures: dict[str, float]


@dataclass(frozen=True)
class Summary:
    server: str
    concurrency: int
    rounds: int
    requests: int
    errors: int
    medians: dict[str, float]
    tok_per_s_range: tuple[float, float]


def loadgen(loadgen_path: pathlib.Path, server: RunningServer, load: Load, max_tokens: int) -> dict[str, float]:
    """One loadgen run (it warms up with one short request first); its JSON figures."""
    command = [sys.executable, str(loadgen_path), "--base", server.spec.base_url, "--model", server.spec.model,
               "--concurrency", str(load.concurrency), "--requests", str(load.requests),
               "--max-tokens", str(max_tokens), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=_LOADGEN_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen against {server.spec.label} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_rounds(servers: Sequence[RunningServer], loads: Sequence[Load], rounds: int, max_tokens: int,
               loadgen_path: pathlib.Path) -> list[Run]:
    """Every load against every server, `rounds` times; each round starts with the next server."""
    runs = []
    for round_index in range(rounds):
        shift = round_index % len(servers)
        order = [*servers[shift:], *servers[:shift]]
        for load in loads:
            for server in order:
                figures = loadgen(loadgen_path, server, load, max_tokens)
                print(f"round {round_index + 1}/{rounds}  {server.spec.label:42s} {load.concurrency:3d} clients: "
                      f"{figures['tok_per_s']:7.1f} tok/s  TTFT p50 {figures['ttft_p50_ms']:8.1f} ms  "
                      f"errors {figures['errors']}", file=sys.stderr, flush=True)
                runs.append(Run(server.spec.name, load, round_index, figures))
    return runs


def summarize(runs: Sequence[Run]) -> list[Summary]:
    """Medians over the rounds, per server and concurrency, in the order first measured."""
    groups: dict[tuple[str, int], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.server, run.load.concurrency), []).append(run)
    summaries = []
    for (server, concurrency), group in groups.items():
        rates = [run.figures["tok_per_s"] for run in group]
        summaries.append(Summary(
            server=server,
            concurrency=concurrency,
            rounds=len(group),
            requests=sum(int(run.figures["requests"]) for run in group),
            errors=sum(int(run.figures["errors"]) for run in group),
            medians={metric: statistics.median(run.figures[metric] for run in group) for metric in METRICS},
            tok_per_s_range=(min(rates), max(rates)),
        ))
    return summaries
