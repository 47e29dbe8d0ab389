"""Resident memory of a freshly started tokenwire while it serves many short chat requests."""
from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
import psutil

from bench.servers import RunningServer

_TOPICS = ("the moon", "bread", "volcanoes", "chess", "the Roman empire", "honeybees", "jazz", "glaciers",
           "electric cars", "tea", "octopuses", "lighthouses")


@dataclass(frozen=True)
class MemorySample:
    """Resident set sizes in MiB after `requests` completed requests."""

    requests: int
    worker_mib: float
    bridge_mib: float
    total_mib: float


@dataclass(frozen=True)
class MemoryResult:
    concurrency: int
    max_tokens: int
    errors: int
    samples: list[MemorySample]

    def ratio(self, field: str) -> float:
        """`field` after the last checkpoint over after the first (1.0: no growth)."""
        return getattr(self.samples[-1], field) / getattr(self.samples[0], field)


def _listening_ports(process: psutil.Process) -> set[int]:
    try:
        return {c.laddr.port for c in process.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return set()


def _rss_mib(processes: Sequence[psutil.Process]) -> float:
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total / 2**20


def sample(server: RunningServer, requests: int) -> MemorySample:
    """RSS of the bridge (the process serving the REST port), the worker (the other process serving
    a port, with its children) and the whole process tree of `tokenwire serve`."""
    http_port = urllib.parse.urlsplit(server.spec.base_url).port
    launcher = psutil.Process(server.pid)
    tree = [launcher, *launcher.children(recursive=True)]
    bridge, worker = [], []
    for process in tree[1:]:
        ports = _listening_ports(process)
        if http_port in ports:
            bridge.append(process)
        elif ports:
            worker += [process, *process.children(recursive=True)]
    return MemorySample(requests, _rss_mib(worker), _rss_mib(bridge), _rss_mib(tree))


async def _chat(client: httpx.AsyncClient, model: str, index: int, max_tokens: int) -> bool:
    topic = _TOPICS[index % len(_TOPICS)]
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": f"Request {index}: tell me one fact about {topic}."}]}
    reply = await client.post("/chat/completions", json=body)
    return reply.status_code == 200


async def _send(base_url: str, model: str, first: int, count: int, concurrency: int, max_tokens: int) -> int:
    """Sends requests first..first+count-1 over `concurrency` clients; returns how many failed."""
    indices = iter(range(first, first + count))
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:

        async def one_client() -> int:
            return sum([not await _chat(client, model, index, max_tokens) for index in indices])

        return sum(await asyncio.gather(*(one_client() for _ in range(concurrency))))


def measure(server: RunningServer, checkpoints: Sequence[int], concurrency: int = 16,
            max_tokens: int = 8) -> MemoryResult:
    """Non-streaming chat requests up to each checkpoint in turn, sampling RSS at each."""
    samples, errors, done = [], 0, 0
    for checkpoint in checkpoints:
        errors += asyncio.run(_send(server.spec.base_url, server.spec.model, done, checkpoint - done,
                                    concurrency, max_tokens))
        done = checkpoint
        time.sleep(1.0)  # let in-flight cleanup finish before sampling
        samples.append(sample(server, done))
        print(f"memory after {done} requests: worker {samples[-1].worker_mib:.0f} MiB, "
              f"total {samples[-1].total_mib:.0f} MiB, errors {errors}", file=sys.stderr, flush=True)
    return MemoryResult(concurrency, max_tokens, errors, samples)
