"""Realistic prompts, side by side with llama-cpp-python's server: long shared system prompts,
multi-turn conversations and long unique prompts, as streaming chat at temperature 0. Servers
alternate within each round, and every round's texts are new (a tag of its own leads every
document), so no server starts a round with the previous round's prompts cached.

- (a) shared document: 16 clients × 2 requests; each request is one ~1,000-token document, the
  same for all, as system message, plus a distinct question; max_tokens 32. Wall time, TTFT.
- (b) multi-turn: 8 clients, each a 4-turn conversation over one ~300-token system prompt; each
  turn adds the previous answer; max_tokens 48. TTFT p50 per turn.
- (c) unique long prompts: 8 clients, each one ~1,500-token prompt of its own; max_tokens 16.
  Prompt tokens per second: all prompt tokens over the wall time.
- (d) memory, tokenwire alone: the KV cache in use while one ~6,000-token conversation runs beside
  15 short ones, against the tokens those sequences hold (from the worker's metrics).

The clients use aiohttp (see bench/embeddings.py for why not httpx). Prompt tokens are counted
with the model's own tokenizer and chat template, the same for every server.
"""
from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.servers import RunningServer

_SUBJECTS = ("The maintenance team", "Every new employee", "The night shift", "Our regional office",
             "The safety officer", "A visiting contractor", "The quality group", "The warehouse crew",
             "Each project lead", "The finance department", "The support desk", "A trainee technician")
_ACTIONS = ("must log every inspection", "reviews the supplier contracts", "checks the fire exits",
            "reports broken equipment", "updates the shared schedule", "signs the visitor book",
            "calibrates the pressure gauges", "archives the monthly invoices", "tests the backup generator",
            "replaces the air filters", "files a short incident note", "confirms the delivery windows")
_WHEN = ("before the end of each week", "within two working days", "at the start of every shift",
         "whenever a customer complains", "after any power cut", "on the first Monday of the month",
         "before leaving the site", "as soon as the alarm sounds", "twice a year", "during the annual audit")
_WHY = ("so that nothing is forgotten.", "because the insurance requires it.", "to keep the records complete.",
        "which saves time later.", "as the regulator expects.", "so the next team knows what happened.")
_QUESTIONS = ("Who checks the fire exits?", "What must be done after a power cut?", "When are invoices archived?",
              "Who signs the visitor book?", "How often is the generator tested?", "What does the support desk do?",
              "Which team replaces the air filters?", "What happens during the annual audit?",
              "Who reports broken equipment?", "When is the shared schedule updated?", "What is logged?",
              "Why are incident notes filed?", "Who calibrates the gauges?", "What do trainees do?",
              "When must the site be checked?", "What does the regulator expect?")
_FOLLOW_UPS = ("Tell me more about that.", "Why is that important?", "Who else is involved?")


class Texts:
    """Handbook-like text of a given length in the model's tokens, the same for every seed."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def tokens(self, messages: list[dict[str, str]]) -> int:
        """The prompt tokens of a chat, as the servers render it."""
        ids = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return len(ids["input_ids"] if hasattr(ids, "keys") else ids)

    def document(self, tokens: int, seed: str) -> str:
        rng = random.Random(seed)
        sentences = [f"Document {seed}."]
        while len(self._tokenizer(" ".join(sentences))["input_ids"]) < tokens:
            sentences.append(f"{rng.choice(_SUBJECTS)} {rng.choice(_ACTIONS)} {rng.choice(_WHEN)} {rng.choice(_WHY)}")
        return " ".join(sentences)


@dataclass(frozen=True)
class Reply:
    ttft_s: float
    text: str


async def _chat(session: aiohttp.ClientSession, url: str, model: str, messages: list[dict[str, str]],
                max_tokens: int) -> Reply:
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    started = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    async with session.post(url, json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"{url}: HTTP {response.status}: {(await response.text())[:500]}")
        async for raw in response.content:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[5:]).get("choices") or []:
                if content := (choice.get("delta") or {}).get("content"):
                    first = first or time.perf_counter()
                    parts.append(content)
    return Reply((first or time.perf_counter()) - started, "".join(parts))


def _percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


@dataclass(frozen=True)
class WorkloadRun:
    server: str
    workload: str
    round: int
    wall_s: float
    ttft_s: list[float]
    prompt_tokens: int
    # Multi-turn: each turn's TTFTs.
    turn_ttft_s: list[list[float]] = field(default_factory=list)

    @property
    def prompt_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.wall_s

    def ttft(self, share: float) -> float:
        return _percentile(self.ttft_s, share)


async def _shared_document(base_url: str, model: str, texts: Texts, tag: str) -> tuple[list[float], int, list]:
    document = texts.document(1000, f"{tag}-shared")
    url = f"{base_url}/chat/completions"
    prompts = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1800)) as session:

        async def client(index: int) -> list[float]:
            nonlocal prompts
            ttfts = []
            for request in range(2):
                question = f"{_QUESTIONS[(2 * index + request) % len(_QUESTIONS)]} (client {index}, request {request})"
                messages = [{"role": "system", "content": document}, {"role": "user", "content": question}]
                prompts += texts.tokens(messages)
                ttfts.append((await _chat(session, url, model, messages, 32)).ttft_s)
            return ttfts

        per_client = await asyncio.gather(*(client(i) for i in range(16)))
    return [t for ttfts in per_client for t in ttfts], prompts, []


async def _multi_turn(base_url: str, model: str, texts: Texts, tag: str) -> tuple[list[float], int, list]:
    system = texts.document(300, f"{tag}-turns")
    url = f"{base_url}/chat/completions"
    turns: list[list[float]] = [[] for _ in range(4)]
    prompts = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1800)) as session:

        async def client(index: int) -> None:
            nonlocal prompts
            messages = [{"role": "system", "content": system},
                        {"role": "user", "content": f"{_QUESTIONS[index % len(_QUESTIONS)]} (conversation {index})"}]
            for turn in range(4):
                prompts += texts.tokens(messages)
                reply = await _chat(session, url, model, messages, 48)
                turns[turn].append(reply.ttft_s)
                messages += [{"role": "assistant", "content": reply.text},
                             {"role": "user", "content": _FOLLOW_UPS[turn % len(_FOLLOW_UPS)]}]

        await asyncio.gather(*(client(i) for i in range(8)))
    return [t for turn in turns for t in turn], prompts, turns


async def _unique_prompts(base_url: str, model: str, texts: Texts, tag: str) -> tuple[list[float], int, list]:
    url = f"{base_url}/chat/completions"
    chats = [[{"role": "user", "content": texts.document(1500, f"{tag}-unique-{i}") + "\nSummarise the rules."}]
             for i in range(8)]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1800)) as session:
        replies = await asyncio.gather(*(_chat(session, url, model, chat, 16) for chat in chats))
    return [reply.ttft_s for reply in replies], sum(texts.tokens(chat) for chat in chats), []


WORKLOADS = {"shared-document": _shared_document, "multi-turn": _multi_turn, "unique-long": _unique_prompts}


def run_rounds(servers: Sequence[RunningServer], texts: Texts, rounds: int) -> list[WorkloadRun]:
    """Every workload on every server, `rounds` times; each round starts with the next server."""
    runs = []
    for round_index in range(rounds):
        shift = round_index % len(servers)
        order = [*servers[shift:], *servers[:shift]]
        for name, workload in WORKLOADS.items():
            for server in order:
                tag = f"r{round_index}-{server.spec.name}"
                started = time.perf_counter()
                ttfts, prompts, turns = asyncio.run(workload(server.spec.base_url, server.spec.model, texts, tag))
                run = WorkloadRun(server.spec.name, name, round_index, time.perf_counter() - started, ttfts, prompts,
                                  turns)
                print(f"round {round_index + 1}/{rounds}  {server.spec.label:42s} {name:16s} wall {run.wall_s:6.1f} s  "
                      f"TTFT p50 {run.ttft(0.5):6.2f} s  prompt {run.prompt_tokens_per_s:7.0f} tok/s",
                      file=sys.stderr, flush=True)
                runs.append(run)
    return runs


@dataclass(frozen=True)
class WorkloadSummary:
    """Medians over the rounds of one server's runs of one workload."""

    server: str
    workload: str
    rounds: int
    wall_s: float
    ttft_p50_s: float
    ttft_p95_s: float
    prompt_tokens_per_s: float
    turn_ttft_p50_s: list[float]


def summarize(runs: Sequence[WorkloadRun]) -> list[WorkloadSummary]:
    groups: dict[tuple[str, str], list[WorkloadRun]] = {}
    for run in runs:
        groups.setdefault((run.server, run.workload), []).append(run)
    return [
        WorkloadSummary(
            server=server,
            workload=workload,
            rounds=len(group),
            wall_s=statistics.median(run.wall_s for run in group),
            ttft_p50_s=statistics.median(run.ttft(0.5) for run in group),
            ttft_p95_s=statistics.median(run.ttft(0.95) for run in group),
            prompt_tokens_per_s=statistics.median(run.prompt_tokens_per_s for run in group),
            turn_ttft_p50_s=[statistics.median(_percentile(run.turn_ttft_s[t], 0.5) for run in group)
                             for t in range(len(group[0].turn_ttft_s))],
        )
        for (server, workload), group in groups.items()
    ]


@dataclass(frozen=True)
class KvMemory:
    """The KV cache while one long conversation runs beside short ones: blocks in use against the
    positions the running sequences fill, at the sample with the most tokens held."""

    long_prompt_tokens: int
    short_requests: int
    used_tokens: int
    held_tokens: int
    capacity_tokens: int
    token_bytes: int
    # What the slot cache before paging held for the same load: every slot as long as the
    # longest sequence, rounded up to a power of two from 256.
    slot_cache_tokens: int

    @property
    def ratio(self) -> float:
        return self.used_tokens / self.held_tokens


def _gauges(metrics_url: str) -> dict[str, float]:
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("tokenwire_engine_kv_cache") or line.startswith("tokenwire_engine_running_sequences"):
            name, value = line.rsplit(" ", 1)
            values[name.split("{")[0]] = float(value)
    return values


def measure_kv_memory(server: RunningServer, texts: Texts, token_bytes: int, slots: int = 16) -> KvMemory:
    """Starts one ~6,000-token conversation and 15 short ones together and samples the worker's
    KV-cache gauges while they run."""
    assert server.spec.metrics_url, "tokenwire's worker metrics are needed"
    long_chat = [{"role": "user", "content": texts.document(6000, "memory-long") + "\nSummarise the rules."}]
    short_chats = [[{"role": "user", "content": f"{_QUESTIONS[i]} Answer in detail."}] for i in range(15)]
    samples: list[dict[str, float]] = []

    async def load() -> None:
        url = f"{server.spec.base_url}/chat/completions"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1800)) as session:
            requests = [asyncio.create_task(_chat(session, url, server.spec.model, long_chat, 64))]
            requests += [asyncio.create_task(_chat(session, url, server.spec.model, chat, 64)) for chat in short_chats]
            while not all(task.done() for task in requests):
                samples.append(await asyncio.to_thread(_gauges, server.spec.metrics_url))
                await asyncio.sleep(0.2)
            await asyncio.gather(*requests)

    asyncio.run(load())
    busiest = max(samples, key=lambda s: s.get("tokenwire_engine_kv_cache_held_tokens", 0))
    capacity = int(busiest["tokenwire_engine_kv_cache_capacity_tokens"])
    longest = texts.tokens(long_chat) + 64
    slot_length = 256
    while slot_length < longest:
        slot_length *= 2
    return KvMemory(
        long_prompt_tokens=texts.tokens(long_chat),
        short_requests=len(short_chats),
        used_tokens=round(busiest["tokenwire_engine_kv_cache_usage"] * capacity),
        held_tokens=int(busiest["tokenwire_engine_kv_cache_held_tokens"]),
        capacity_tokens=capacity,
        token_bytes=token_bytes,
        slot_cache_tokens=slots * slot_length,
    )
