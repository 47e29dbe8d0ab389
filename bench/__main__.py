"""`python -m bench`: tokenwire against its peers (generation, and realistic prompts: shared documents,
multi-turn conversations, long unique prompts), sentence-transformers (embeddings) and itself over
time (memory), in one run; writes BENCHMARKS.md and the raw figures as JSON."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import pathlib
import shlex
import sys
import urllib.request

from transformers import AutoTokenizer

from bench import embeddings, memory, realistic, report, serving
from bench.machine import CpuSnapshot, describe, other_work_share
from bench.models import ModelFiles, default_cache_dir
from bench.servers import (
    LLAMA_CPP,
    ROOT,
    SERVER_NAMES,
    TOKENWIRE,
    TRANSFORMERS,
    RunningServer,
    launch,
    missing_reason,
    shown,
    spec_for,
    stop_servers_on_sigterm,
)

PARTS = ("generation", "realistic", "embeddings", "memory")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N, for every server (default: cpu)")
    parser.add_argument("--servers", type=lambda text: text.split(","),
                        help=f"comma-separated, from {','.join(SERVER_NAMES)} (default: all three on CPU; "
                        f"{TOKENWIRE},{TRANSFORMERS} on CUDA, where the pip-built llama.cpp has no GPU)")
    parser.add_argument("--parts", type=lambda text: text.split(","), default=list(PARTS),
                        help=f"comma-separated, from {','.join(PARTS)} (default: all)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every load on every server (default: 3)")
    parser.add_argument("--load", type=lambda text: [serving.Load.parse(item) for item in text.split(",")],
                        default=[serving.Load(1, 8), serving.Load(16, 2)], metavar="CxR,...",
                        help="C clients × R requests each, per load (default: 1x8,16x2)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--realistic-rounds", type=int, default=2,
                        help="rounds of the realistic workloads on tokenwire and llama-cpp-python (default: 2)")
    parser.add_argument("--memory-requests", type=int, default=2000,
                        help="requests in the memory check (default: 2000; RSS sampled after 100 and every 500)")
    parser.add_argument("--embedding-repeats", type=int, default=3)
    parser.add_argument("--cache-dir", type=pathlib.Path, default=default_cache_dir(),
                        help="tokenwire's converted-weights cache, also the HF directory transformers serve loads")
    parser.add_argument("--loadgen", type=pathlib.Path, default=serving.DEFAULT_LOADGEN)
    parser.add_argument("--output", type=pathlib.Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--results-dir", type=pathlib.Path, default=ROOT / "bench" / "results",
                        help="raw figures (JSON) and server logs")
    return parser


def _memory_checkpoints(total: int) -> list[int]:
    return sorted({min(100, total), total, *range(500, total, 500)})


def _compare_generation(tokenwire: RunningServer, servers: list[str], args: argparse.Namespace,
                        models: ModelFiles, log_dir: pathlib.Path) -> tuple[dict[str, str], list[serving.Run]]:
    """Starts the peers next to the running tokenwire, runs every round, stops the peers.

    Returns each server's command line and every loadgen run."""
    with contextlib.ExitStack() as peers:
        running = [tokenwire] if TOKENWIRE in servers else []
        for name in servers:
            if name != TOKENWIRE:
                running.append(peers.enter_context(launch(spec_for(name, models, args.device, args.cache_dir),
                                                          log_dir)))
        commands = {server.spec.name: server.spec.command_line() for server in running}
        return commands, serving.run_rounds(running, args.load, args.rounds, args.max_tokens, args.loadgen)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    stop_servers_on_sigterm()
    started, cpu_at_start = datetime.datetime.now().astimezone(), CpuSnapshot.take()
    servers = args.servers or ([TOKENWIRE, TRANSFORMERS] if args.device.startswith("cuda")
                               else [TOKENWIRE, LLAMA_CPP, TRANSFORMERS])
    if unknown := (set(servers) - set(SERVER_NAMES)) | (set(args.parts) - set(PARTS)):
        raise SystemExit(f"unknown server or part: {', '.join(sorted(unknown))}")
    if reason := missing_reason(TOKENWIRE):
        raise SystemExit(f"cannot benchmark: {reason}")
    # Peers that are not installed are left out of the comparison, and the report says why.
    skipped = {name: reason for name in servers if (reason := missing_reason(name))}
    stamp = started.strftime("%Y%m%d-%H%M%S")
    log_dir = args.results_dir / f"logs-{stamp}"
    models = ModelFiles.locate(args.cache_dir)
    machine = describe(ROOT)
    commands: dict[str, str] = {}
    runs: list[serving.Run] = []
    embedding_results: list[embeddings.EmbeddingComparison] = []
    memory_result = None

    if "generation" in args.parts or "embeddings" in args.parts:
        with launch(spec_for(TOKENWIRE, models, args.device, args.cache_dir), log_dir) as tokenwire:
            if "generation" in args.parts:
                compared = [name for name in servers if name not in skipped]
                commands, runs = _compare_generation(tokenwire, compared, args, models, log_dir)
            if "embeddings" in args.parts:
                embedding_results = embeddings.compare(tokenwire.spec.base_url, models.embedding_dir, args.device,
                                                       repeats=args.embedding_repeats)
    realistic_runs: list[realistic.WorkloadRun] = []
    kv_memory = None
    if "realistic" in args.parts:
        texts = realistic.Texts(AutoTokenizer.from_pretrained(models.hf_dir))
        with contextlib.ExitStack() as stack:
            fresh = stack.enter_context(launch(spec_for(TOKENWIRE, models, args.device, args.cache_dir), log_dir))
            running = [fresh]
            if LLAMA_CPP in servers and LLAMA_CPP not in skipped:
                peer = stack.enter_context(launch(spec_for(LLAMA_CPP, models, args.device, args.cache_dir), log_dir))
                running.append(peer)
                commands.setdefault(LLAMA_CPP, peer.spec.command_line())
            commands.setdefault(TOKENWIRE, fresh.spec.command_line())
            realistic_runs = realistic.run_rounds(running, texts, args.realistic_rounds)
            card = json.loads(urllib.request.urlopen(f"{fresh.spec.base_url}/models/{fresh.spec.model}").read())
            kv_memory = realistic.measure_kv_memory(fresh, texts, card["kv_cache"]["bytes_per_token"])
    if "memory" in args.parts:
        with launch(spec_for(TOKENWIRE, models, args.device, args.cache_dir), log_dir) as fresh:
            memory_result = memory.measure(fresh, _memory_checkpoints(args.memory_requests))

    cpu_at_end = CpuSnapshot.take()
    command = shlex.join([shown(sys.executable), "-m", "bench", *argv])
    result = report.BenchResult(
        device=args.device, machine=machine,
        command=f"make bench{f' BENCH_ARGS={shlex.quote(shlex.join(argv))}' if argv else ''}  # or: {command}",
        started=started.strftime("%Y-%m-%d %H:%M %Z"), duration_s=cpu_at_end.at - cpu_at_start.at,
        other_work=other_work_share(cpu_at_start, cpu_at_end), rounds=args.rounds,
        loads=args.load, max_tokens=args.max_tokens, commands=commands,
        skipped=skipped if "generation" in args.parts else {},
        runs=runs, generation=serving.summarize(runs), embeddings=embedding_results, memory=memory_result,
        realistic_rounds=args.realistic_rounds, realistic_runs=realistic_runs,
        realistic=realistic.summarize(realistic_runs), kv_memory=kv_memory,
    )
    args.results_dir.mkdir(parents=True, exist_ok=True)
    raw = args.results_dir / f"{report.section_key(result)}-{stamp}.json"
    raw.write_text(json.dumps(dataclasses.asdict(result), indent=1))
    report.write(result, args.output)
    print(f"wrote {args.output} and {raw}", file=sys.stderr)


if __name__ == "__main__":
    main()
