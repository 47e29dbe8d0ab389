"""Streaming clients that time every request, on both of tokenwire's APIs: gRPC GenerateStream on
the worker, and REST /v1/completions (server-sent events) on the bridge. Prompts go as token ids,
decoding is greedy and every request runs to max_tokens (ignore_eos), so each API does the same work.

The REST clients use aiohttp (see bench/embeddings.py for why not httpx); output tokens come from
the stream's usage (gRPC's Usage message, REST's final usage chunk), and the first token's time
from the first delta that carries tokens (gRPC) or the first chunk with a choice (REST).
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp
import grpc

from bench.timings import APIS, GRPC, RequestTiming
from tokenwire.stubs import WorkerStubs
from tokenwire.v1 import common_pb2, generation_pb2

# One request: its prompt, the load's start (time.perf_counter()) and its time limit → its timing.
Send = Callable[[list[int], float, float], Awaitable[RequestTiming]]


@dataclass(frozen=True)
class Endpoints:
    grpc_address: str
    # The OpenAI API's base URL, ending in /v1.
    rest_base_url: str
    model: str


def run_load(api: str, endpoints: Endpoints, prompts: Sequence[list[int]], clients: int, max_tokens: int,
             timeout_s: float) -> list[RequestTiming]:
    """`clients` concurrent clients share `prompts` (client i sends prompts i, i + clients, …, one
    after another); every request's timing, in seconds from the load's start. The load ends within
    `timeout_s`: a request still running then fails, and one not sent by then fails unsent."""
    if api not in APIS:
        raise ValueError(f"unknown API {api!r}; choose from {', '.join(APIS)}")
    opener = _grpc_load if api == GRPC else _rest_load
    return asyncio.run(opener(endpoints, prompts, clients, max_tokens, timeout_s))


async def _spread(send: Send, prompts: Sequence[list[int]], clients: int, timeout_s: float) -> list[RequestTiming]:
    origin = time.perf_counter()
    deadline = origin + timeout_s

    async def client(mine: Sequence[list[int]]) -> list[RequestTiming]:
        timings = []
        for prompt in mine:
            if (left := deadline - time.perf_counter()) <= 0:
                timings.append(_failed(time.perf_counter(), origin, f"not sent: the load's {timeout_s:g} s were over"))
            else:
                timings.append(await send(prompt, origin, left))
        return timings

    per_client = await asyncio.gather(*(client(prompts[i::clients]) for i in range(clients)))
    return [timing for timings in per_client for timing in timings]


async def _grpc_load(endpoints: Endpoints, prompts: Sequence[list[int]], clients: int, max_tokens: int,
                     timeout_s: float) -> list[RequestTiming]:
    async with grpc.aio.insecure_channel(endpoints.grpc_address) as channel:
        stubs = WorkerStubs.on(channel)

        async def send(prompt: list[int], origin: float, limit_s: float) -> RequestTiming:
            request = generation_pb2.GenerateRequest(
                model=endpoints.model,
                token_ids=common_pb2.TokenIds(ids=prompt),
                sampling=generation_pb2.SamplingParams(temperature=0.0),
                stopping=generation_pb2.StoppingCriteria(max_new_tokens=max_tokens, ignore_eos=True),
                response=generation_pb2.ResponseOptions(token_ids=True),
            )
            start = time.perf_counter()
            first, end, tokens = None, start, 0
            try:
                async for event in stubs.generation.GenerateStream(request, timeout=limit_s):
                    if event.HasField("delta") and event.delta.token_ids:
                        end = time.perf_counter()
                        first = first or end
                    elif event.HasField("usage"):
                        tokens = event.usage.completion_tokens
            except grpc.aio.AioRpcError as error:
                return _failed(start, origin, f"{error.code().name}: {error.details()}")
            return RequestTiming(start - origin, _since(first, origin), end - origin, tokens)

        return await _spread(send, prompts, clients, timeout_s)


async def _rest_load(endpoints: Endpoints, prompts: Sequence[list[int]], clients: int, max_tokens: int,
                     timeout_s: float) -> list[RequestTiming]:
    session = aiohttp.ClientSession(
        base_url=endpoints.rest_base_url.rstrip("/") + "/",  # relative paths append to it
        connector=aiohttp.TCPConnector(limit=clients),
    )
    async with session:

        async def send(prompt: list[int], origin: float, limit_s: float) -> RequestTiming:
            body = {"model": endpoints.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                    "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
            start = time.perf_counter()
            first, end, tokens = None, start, 0
            try:
                limit = aiohttp.ClientTimeout(total=limit_s)
                async with session.post("completions", json=body, timeout=limit) as reply:
                    if reply.status != 200:
                        return _failed(start, origin, f"HTTP {reply.status}: {(await reply.text())[:300]}")
                    async for line in reply.content:
                        if not line.startswith(b"data:") or (data := line[5:].strip()) == b"[DONE]":
                            continue
                        chunk = json.loads(data)
                        if "error" in chunk:
                            return _failed(start, origin, json.dumps(chunk["error"])[:300])
                        if chunk.get("choices"):
                            end = time.perf_counter()
                            first = first or end
                        if chunk.get("usage"):
                            tokens = chunk["usage"]["completion_tokens"]
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                return _failed(start, origin, f"{type(error).__name__}: {error}")
            return RequestTiming(start - origin, _since(first, origin), end - origin, tokens)

        return await _spread(send, prompts, clients, timeout_s)


def _since(moment: float | None, origin: float) -> float | None:
    return None if moment is None else moment - origin


def _failed(start: float, origin: float, error: str) -> RequestTiming:
    return RequestTiming(start - origin, None, time.perf_counter() - origin, 0, error)
