"""BENCHMARKS.md: one section per device, rewritten by each run on that device, the others kept."""
from __future__ import annotations

import pathlib
from dataclasses import dataclass, field

from bench import markdown
from bench.embeddings import EmbeddingComparison
from bench.machine import Machine
from bench.memory import MemoryResult
from bench.realistic import KvMemory, WorkloadRun, WorkloadSummary
from bench.servers import LABELS, LLAMA_CPP, TOKENWIRE, TRANSFORMERS
from bench.serving import Load, Run, Summary

# The targets, stated for the 2-core CPU machine.
TARGET_SINGLE_VS_LLAMA = 1.0
TARGET_CONCURRENT_VS_BEST_PEER = 3.0
TARGET_TTFT_P50_S = 0.5
TARGET_EMBEDDING = {"batch": 0.9, "single": 2.0}
TARGET_MEMORY_GROWTH = 0.10
# Realistic prompts (bench/realistic.py): tokenwire against llama-cpp-python.
TARGET_SHARED_DOCUMENT_SPEEDUP = 3.0
TARGET_SHARED_DOCUMENT_TTFT_S = 1.0
TARGET_LATER_TURN_TTFT_S = 0.4
TARGET_UNIQUE_PROMPT_SPEEDUP = 2.0
TARGET_KV_OVERHEAD = 1.5

_HEADER = """# Benchmarks

tokenwire, called through its OpenAI-compatible REST bridge as users call it, side by side with
two peers serving the same model (SmolLM2-135M-Instruct): the llama-cpp-python OpenAI server on
the same GGUF file, and `transformers serve --continuous-batching` on the same weights (the HF
directory tokenwire converts the GGUF file into). Short-prompt generation figures come from the
shared load generator `../shared/bench/loadgen.py` (streaming chat, temperature 0); realistic
prompts (a shared ~1,000-token document, 4-turn conversations, long unique prompts) from
`bench/realistic.py`, against llama-cpp-python, with the KV cache's memory while a long
conversation runs beside short ones. Embeddings go through REST against sentence-transformers in
process; memory is tokenwire's resident set while it serves many short requests.

Written by `bench/` (`make bench`, or `python -m bench --help`). Each run rewrites only the
section of its own device, so the CPU and GPU tables sit side by side.

Sections titled with a model's shape come from `bench/shapes.py` (`make bench-shapes`, or
`python -m bench.shapes --help`): tokenwire serving that shape with random weights
(`--load-format dummy`), random token-id prompts through gRPC and streaming REST at 1 and 64
clients, beside transformers' `generate` on the same weights, with the GPU targets of the issue.
"""


@dataclass(frozen=True)
class BenchResult:
    """Everything one run measured, with what is needed to reproduce it."""

    device: str
    machine: Machine
    command: str
    started: str
    duration_s: float
    # The share of the machine's CPU that processes outside the run used while it ran.
    other_work: float
    rounds: int
    loads: list[Load]
    max_tokens: int
    # Server name → the command line it ran with, for the servers that took part.
    commands: dict[str, str]
    # Server name → why it did not take part.
    skipped: dict[str, str]
    # Every loadgen run, and their medians per server and concurrency.
    runs: list[Run]
    generation: list[Summary]
    embeddings: list[EmbeddingComparison]
    memory: MemoryResult | None
    realistic_rounds: int = 0
    realistic_runs: list[WorkloadRun] = field(default_factory=list)
    realistic: list[WorkloadSummary] = field(default_factory=list)
    kv_memory: KvMemory | None = None

    def workload(self, server: str, name: str) -> WorkloadSummary | None:
        return next((w for w in self.realistic if w.server == server and w.workload == name), None)

    def summary(self, server: str, concurrency: int) -> Summary | None:
        return next((s for s in self.generation if s.server == server and s.concurrency == concurrency), None)

    def tok_per_s(self, server: str, concurrency: int) -> float | None:
        summary = self.summary(server, concurrency)
        return summary.medians["tok_per_s"] if summary else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _throughput_target(target: str, tokenwire: float | None, peer: float | None, minimum: float,
                       peer_label: str = "") -> tuple[str, str, str]:
    if tokenwire is None or not peer:
        return target, "n/a", "n/a"
    ratio = tokenwire / peer
    return target, f"{ratio:.2f}× ({tokenwire:.1f} vs {peer:.1f} tok/s{peer_label})", markdown.met(ratio >= minimum)


def _targets(result: BenchResult) -> list[str]:
    """The issue's targets, each with its measured value and whether it is met."""
    rows = [_throughput_target(f"1 client: tokenwire tok/s ≥ {TARGET_SINGLE_VS_LLAMA:g} × llama-cpp-python",
                               result.tok_per_s(TOKENWIRE, 1), result.tok_per_s(LLAMA_CPP, 1),
                               TARGET_SINGLE_VS_LLAMA)]
    peers = {p: rate for p in (LLAMA_CPP, TRANSFORMERS) if (rate := result.tok_per_s(p, 16)) is not None}
    best = max(peers, key=lambda p: peers[p], default=None)
    rows.append(_throughput_target(
        f"16 clients: tokenwire aggregate tok/s ≥ {TARGET_CONCURRENT_VS_BEST_PEER:g} × the better peer",
        result.tok_per_s(TOKENWIRE, 16), peers.get(best) if best else None, TARGET_CONCURRENT_VS_BEST_PEER,
        f", {LABELS[best]}" if best else ""))
    ttft_target = f"16 clients: tokenwire time to first token p50 ≤ {TARGET_TTFT_P50_S:g} s"
    if summary := result.summary(TOKENWIRE, 16):
        ttft = summary.medians["ttft_p50_ms"] / 1e3
        rows.append((ttft_target, f"{ttft:.2f} s", markdown.met(ttft <= TARGET_TTFT_P50_S)))
    else:
        rows.append((ttft_target, "n/a", "n/a"))
    for comparison in result.embeddings:
        target = TARGET_EMBEDDING[comparison.kind]
        rows.append((f"embeddings, {comparison.workload}: REST ≥ {target:g} × in-process {comparison.baseline}",
                     f"{comparison.ratio:.2f}× ({comparison.rest:.0f} vs {comparison.in_process:.0f} sentences/s)",
                     markdown.met(comparison.ratio >= target)))
    if result.memory:
        first, last = result.memory.samples[0], result.memory.samples[-1]
        growth = result.memory.ratio("worker_mib") - 1
        rows.append((f"memory: worker RSS after {last.requests} requests within {TARGET_MEMORY_GROWTH:.0%} "
                     f"of after {first.requests}",
                     f"{growth:+.1%} ({first.worker_mib:.0f} → {last.worker_mib:.0f} MiB)",
                     markdown.met(abs(growth) <= TARGET_MEMORY_GROWTH)))
    rows += _realistic_targets(result)
    return ["### Targets", "", *markdown.table(("target", "measured", "met"), rows), ""]


def _realistic_targets(result: BenchResult) -> list[tuple[str, str, str]]:
    rows = []
    ours, peer = result.workload(TOKENWIRE, "shared-document"), result.workload(LLAMA_CPP, "shared-document")
    if ours and peer:
        speedup = peer.wall_s / ours.wall_s
        rows.append((f"(a) shared document: tokenwire ≥ {TARGET_SHARED_DOCUMENT_SPEEDUP:g}× faster than "
                     f"llama-cpp-python, TTFT p50 ≤ {TARGET_SHARED_DOCUMENT_TTFT_S:g} s",
                     f"{speedup:.2f}× ({ours.wall_s:.1f} vs {peer.wall_s:.1f} s), TTFT p50 {ours.ttft_p50_s:.2f} s",
                     markdown.met(speedup >= TARGET_SHARED_DOCUMENT_SPEEDUP
                                  and ours.ttft_p50_s <= TARGET_SHARED_DOCUMENT_TTFT_S)))
    if ours := result.workload(TOKENWIRE, "multi-turn"):
        later = ours.turn_ttft_p50_s[1:]
        rows.append((f"(b) multi-turn: TTFT p50 of turns 2–4 ≤ {TARGET_LATER_TURN_TTFT_S:g} s",
                     ", ".join(f"{t:.2f} s" for t in later), markdown.met(max(later) <= TARGET_LATER_TURN_TTFT_S)))
    ours, peer = result.workload(TOKENWIRE, "unique-long"), result.workload(LLAMA_CPP, "unique-long")
    if ours and peer:
        ratio = ours.prompt_tokens_per_s / peer.prompt_tokens_per_s
        rows.append((f"(c) unique long prompts: prompt tokens/s ≥ {TARGET_UNIQUE_PROMPT_SPEEDUP:g}× llama-cpp-python",
                     f"{ratio:.2f}× ({ours.prompt_tokens_per_s:.0f} vs {peer.prompt_tokens_per_s:.0f} tok/s)",
                     markdown.met(ratio >= TARGET_UNIQUE_PROMPT_SPEEDUP)))
    if kv := result.kv_memory:
        rows.append((f"(d) KV memory in use ≤ {TARGET_KV_OVERHEAD:g}× the bytes of the tokens held",
                     f"{kv.ratio:.2f}× ({kv.used_tokens} vs {kv.held_tokens} tokens)",
                     markdown.met(kv.ratio <= TARGET_KV_OVERHEAD)))
    return rows


def _generation(result: BenchResult) -> list[str]:
    loads = ", ".join(f"{load.concurrency} client{'s' * (load.concurrency > 1)} × {load.requests} "
                      f"request{'s' * (load.requests > 1)} each" for load in result.loads)
    lines = [f"### Generation: streaming chat, temperature 0, max_tokens {result.max_tokens}", "",
             f"Loads: {loads}; {result.rounds} round{'s' * (result.rounds > 1)}, servers alternating (each round "
             "starts with the next server). Figures are medians over the rounds of loadgen's per-run values; "
             "the range is the lowest and highest tok/s of the rounds. Time to first token (TTFT) and "
             "inter-token latency (ITL) are loadgen's p50/p95 within a run.", ""]
    rows = []
    for s in sorted(result.generation, key=lambda s: (s.concurrency, s.server != TOKENWIRE)):
        m = s.medians
        rows.append((LABELS[s.server], str(s.concurrency), str(s.requests), f"{m['tok_per_s']:.1f}",
                     f"{s.tok_per_s_range[0]:.1f}–{s.tok_per_s_range[1]:.1f}",
                     markdown.duration(m["ttft_p50_ms"] / 1e3), markdown.duration(m["ttft_p95_ms"] / 1e3),
                     f"{m['itl_p50_ms']:.1f} ms", f"{m['itl_p95_ms']:.1f} ms", str(s.errors)))
    for name, reason in result.skipped.items():
        rows.append((LABELS[name], "—", "—", f"skipped: {reason}", "", "", "", "", "", ""))
    lines += markdown.table(("server", "clients", "requests, all rounds", "tok/s", "tok/s range", "TTFT p50",
                             "TTFT p95", "ITL p50", "ITL p95", "errors"), rows)
    peers = [p for p in (LLAMA_CPP, TRANSFORMERS) if p in result.commands]
    if TOKENWIRE in result.commands and peers:
        ratio_rows = []
        for load in result.loads:
            cells = []
            for peer in peers:
                ratio = _ratio(result.tok_per_s(TOKENWIRE, load.concurrency), result.tok_per_s(peer, load.concurrency))
                cells.append("n/a" if ratio is None else f"{ratio:.2f}×")
            ratio_rows.append((str(load.concurrency), *cells))
        lines += ["", "tokens/s ratio, tokenwire / peer, same run:", "",
                  *markdown.table(("clients", *(LABELS[p] for p in peers)), ratio_rows)]
    lines += ["", "loadgen counts output tokens from a stream's final usage chunk where the server sends one, "
              "else one per content chunk. Servers as started, each with its own defaults for everything else "
              "(ports are picked free per run):", ""]
    lines += [f"- {LABELS[name]}: `{command}`" for name, command in result.commands.items()]
    return [*lines, ""]


def _realistic(result: BenchResult) -> list[str]:
    rows = []
    for w in sorted(result.realistic, key=lambda w: (list(WORKLOAD_TITLES).index(w.workload), w.server != TOKENWIRE)):
        turns = " / ".join(f"{t:.2f}" for t in w.turn_ttft_p50_s) if w.turn_ttft_p50_s else "—"
        rows.append((WORKLOAD_TITLES[w.workload], LABELS[w.server], f"{w.wall_s:.1f} s", f"{w.ttft_p50_s:.2f} s",
                     f"{w.ttft_p95_s:.2f} s", turns, f"{w.prompt_tokens_per_s:.0f}"))
    lines = ["### Realistic prompts: shared documents, conversations, long prompts", "",
             f"Streaming chat at temperature 0 (bench/realistic.py); {result.realistic_rounds} round"
             f"{'s' * (result.realistic_rounds > 1)}, servers alternating, new texts every round. Medians over the "
             "rounds. Prompt tokens/s is every prompt token of the workload (the model's tokenizer and chat "
             "template) over its wall time.", "",
             *markdown.table(("workload", "server", "wall time", "TTFT p50", "TTFT p95", "TTFT p50 per turn (s)",
                      "prompt tok/s"), rows), ""]
    if kv := result.kv_memory:
        mib = kv.token_bytes / 2**20
        lines += [f"KV cache while one {kv.long_prompt_tokens}-token conversation runs beside {kv.short_requests} "
                  f"short ones (max_tokens 64 each), at the sample holding the most tokens: blocks in use hold "
                  f"{kv.used_tokens} positions ({kv.used_tokens * mib:.0f} MiB) for {kv.held_tokens} positions the "
                  f"sequences fill ({kv.held_tokens * mib:.0f} MiB): {kv.ratio:.2f}×. The slot cache this replaced "
                  f"gave 16 slots the longest sequence's length: {kv.slot_cache_tokens} positions "
                  f"({kv.slot_cache_tokens * mib:.0f} MiB). The pool holds {kv.capacity_tokens} positions.", ""]
    return lines


WORKLOAD_TITLES = {
    "shared-document": "(a) shared ~1,000-token document, 16 clients × 2",
    "multi-turn": "(b) 4-turn conversations, 8 clients",
    "unique-long": "(c) unique ~1,500-token prompts, 8 clients",
}


def _embeddings(result: BenchResult) -> list[str]:
    rows = [(c.workload, f"{c.rest:.0f}", c.baseline, f"{c.in_process:.0f}", f"{c.ratio:.2f}×")
            for c in result.embeddings]
    return ["### Embeddings: all-MiniLM-L6-v2, REST `/v1/embeddings` vs sentence-transformers in process", "",
            "Same sentences on both sides; REST requests ask for `encoding_format: base64`, as the openai "
            "client does by default, from aiohttp clients in the bench's process (see bench/embeddings.py). "
            "Medians of alternating repeats, in sentences per second.", "",
            *markdown.table(("REST workload", "REST sentences/s", "in-process baseline", "in-process sentences/s",
                     "REST / in-process"), rows), ""]


def _memory(memory: MemoryResult) -> list[str]:
    rows = [(str(s.requests), f"{s.worker_mib:.0f}", f"{s.bridge_mib:.0f}", f"{s.total_mib:.0f}")
            for s in memory.samples]
    return ["### Memory: resident set of a fresh tokenwire", "",
            f"Non-streaming chat, max_tokens {memory.max_tokens}, {memory.concurrency} concurrent clients, "
            f"{memory.errors} errors. Worker: the gRPC worker process and its children; total: the whole "
            "`tokenwire serve` process tree.", "",
            *markdown.table(("requests served", "worker MiB", "bridge MiB", "total MiB"), rows),
            "", f"Worker after {memory.samples[-1].requests} / after {memory.samples[0].requests}: "
            f"{memory.ratio('worker_mib'):.3f}; total: {memory.ratio('total_mib'):.3f}.", ""]


def section_key(result: BenchResult) -> str:
    return markdown.section_key(result.machine.device_label(result.device))


def render_section(result: BenchResult) -> str:
    """The markdown of one run: targets (CPU only; the issue states them there), tables, machine."""
    lines = [f"## {result.machine.device_label(result.device)}", "",
             f"Measured {result.started} at commit {result.machine.commit}; the run took "
             f"{result.duration_s / 60:.1f} min. Reproduce with:", "", "```sh", result.command, "```", ""]
    lines += markdown.other_work_note(result.other_work)
    if not result.device.startswith("cuda"):
        lines += _targets(result)
    if result.generation:
        lines += _generation(result)
    if result.realistic or result.kv_memory:
        lines += _realistic(result)
    if result.embeddings:
        lines += _embeddings(result)
    if result.memory:
        lines += _memory(result.memory)
    lines += markdown.machine_section(result.machine, result.other_work)
    return "\n".join(lines)


def write(result: BenchResult, path: pathlib.Path) -> None:
    """Puts this run's section into `path`, replacing the previous one of the same device."""
    markdown.write_section(path, section_key(result), render_section(result), _HEADER)
