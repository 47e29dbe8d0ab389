"""`python -m bench.shapes`: tokenwire serving a reference model's shape with random weights
(`--load-format dummy`), measured through its gRPC API and its REST bridge at each client count,
then transformers' `generate` on the same weights as the baseline; writes a section of
BENCHMARKS.md (with the issue's GPU targets) and the raw figures as JSON.

The defaults are the issue's GPU configuration (the Llama-3.1-8B shape, bf16, 1,024-token prompts,
128 output tokens, 1 and 64 clients). On a CPU, a small shape runs in minutes, e.g.
`--device cpu --model HuggingFaceTB/SmolLM2-135M-Instruct=bench/configs/smollm2-135m-instruct
--prompt-tokens 256 --max-tokens 32 --clients 1,8` (`make bench-shapes-cpu`).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import shlex
import sys
from collections.abc import Callable

import torch
from transformers import AutoTokenizer

from bench import baseline, shapes_report
from bench.clients import Endpoints, run_load
from bench.machine import CpuSnapshot, describe, other_work_share
from bench.models import default_cache_dir
from bench.servers import ROOT, TOKENWIRE, ServerSpec, free_port, launch, shown, stop_servers_on_sigterm
from bench.shapes_report import ApiLoad, ShapesResult
from bench.timings import APIS, PromptSource, summarize
from service.models.dummy import tokenizer_dir
from service.models.sources import parse_spec

# The warm-up's output tokens: enough to run the decode steps of the largest batch.
_WARMUP_TOKENS = 4


def _list_of(kind: type) -> Callable[[str], list]:
    return lambda text: [kind(item) for item in text.split(",")]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.shapes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=shapes_report.REFERENCE_MODEL,
                        help="as tokenwire's --model: a reference model id, or [ID=]DIR of a config.json "
                        "(default: %(default)s)")
    parser.add_argument("--device", default="cuda", help="cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--dtype", default=shapes_report.REFERENCE_DTYPE, choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--prompt-tokens", type=int, default=shapes_report.REFERENCE_PROMPT_TOKENS)
    parser.add_argument("--max-tokens", type=int, default=shapes_report.REFERENCE_MAX_TOKENS)
    parser.add_argument("--clients", type=_list_of(int), default=list(shapes_report.REFERENCE_CLIENTS),
                        help="comma-separated client counts, also the baseline's batch sizes (default: 1,64)")
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--apis", type=_list_of(str), default=list(APIS), help="comma-separated, from grpc,rest")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="run transformers' generate on the same weights after tokenwire (default: yes)")
    parser.add_argument("--load-timeout", type=float, default=300.0, metavar="SECONDS",
                        help="a load's time limit; requests still running or unsent then count as errors")
    parser.add_argument("--kv-cache-memory", help="tokenwire's --kv-cache-memory (default: its own)")
    parser.add_argument("--seed", type=int, default=0, help="of the random prompts")
    parser.add_argument("--cache-dir", type=pathlib.Path, default=default_cache_dir(),
                        help="tokenwire's --cache-dir (the default model's tokenizer, compiled kernels)")
    parser.add_argument("--commit", help="the commit to report, where git cannot tell (a copy of the tree)")
    parser.add_argument("--output", type=pathlib.Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--results-dir", type=pathlib.Path, default=ROOT / "bench" / "results",
                        help="raw figures (JSON) and the server's log")
    return parser


def _shape(config: dict) -> str:
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return (f"{config['architectures'][0]}: {config['num_hidden_layers']} layers, hidden size {config['hidden_size']}, "
            f"{heads} attention heads ({kv_heads} key/value) of {head_dim}, MLP {config['intermediate_size']}, "
            f"vocabulary {config['vocab_size']:,}")


def _prompt_vocab(config_dir: pathlib.Path, vocab_size: int, cache_dir: pathlib.Path) -> range:
    """Prompt ids: what both the model and the tokenizer it is served with know, past the first
    thousand (where the special tokens of most vocabularies are)."""
    known = min(vocab_size, len(AutoTokenizer.from_pretrained(tokenizer_dir(config_dir, cache_dir))))
    return range(min(1000, known // 2), known)


def _server_spec(args: argparse.Namespace, grpc_port: int) -> ServerSpec:
    port = free_port()
    command = [sys.executable, "-m", "tokenwire.cli", "serve", "--model", args.model, "--load-format", "dummy",
               "--no-default-models", "--device", args.device, "--dtype", args.dtype,
               "--max-running", str(max(args.clients)), "--http-port", str(port), "--grpc-port", str(grpc_port),
               "--metrics-port", str(free_port()), "--cache-dir", str(args.cache_dir)]
    if args.kv_cache_memory:
        command += ["--kv-cache-memory", args.kv_cache_memory]
    base = f"http://127.0.0.1:{port}"
    return ServerSpec(TOKENWIRE, command, f"{base}/v1", f"{base}/health", parse_spec(args.model).model_id)


def _measure_tokenwire(args: argparse.Namespace, prompts: PromptSource,
                       log_dir: pathlib.Path) -> tuple[str, list[ApiLoad]]:
    """Every load on every API (both APIs at one client count, then the next count); the server's
    command line and the loads."""
    grpc_port = free_port()
    spec = _server_spec(args, grpc_port)
    loads = []
    with launch(spec, log_dir):
        endpoints = Endpoints(f"127.0.0.1:{grpc_port}", spec.base_url, spec.model)
        most = max(args.clients)
        for api in args.apis:
            warmup = run_load(api, endpoints, prompts.take(most, args.prompt_tokens), most, _WARMUP_TOKENS,
                              args.load_timeout)
            if error := next((t.error for t in warmup if t.error), None):
                raise RuntimeError(f"the {api} warm-up failed: {error}")
        for clients in args.clients:
            for api in args.apis:
                timings = run_load(api, endpoints, prompts.take(clients * args.requests_per_client, args.prompt_tokens),
                                   clients, args.max_tokens, args.load_timeout)
                load = ApiLoad(api, clients, summarize(timings), timings)
                print(f"tokenwire {api:4s} {clients:3d} clients: {load.figures.tok_per_s:9.1f} tok/s  TTFT p50 "
                      f"{load.figures.ttft_p50_s or float('nan'):7.3f} s  TPOT p50 "
                      f"{(load.figures.tpot_p50_s or float('nan')) * 1e3:7.1f} ms  errors {load.figures.errors}",
                      file=sys.stderr, flush=True)
                loads.append(load)
    return spec.command_line(), loads


def _measure_baseline(args: argparse.Namespace, config_dir: pathlib.Path,
                      prompts: PromptSource) -> tuple[list[baseline.BaselineRun], dict[int, str]]:
    """transformers' generate at each batch size; a batch that does not fit says so."""
    model = baseline.load(config_dir, args.device, args.dtype)
    baseline.generate(model, prompts.take(1, args.prompt_tokens), _WARMUP_TOKENS)
    runs, missing = [], {}
    for batch in args.clients:
        try:
            run = baseline.generate(model, prompts.take(batch, args.prompt_tokens), args.max_tokens)
        except torch.OutOfMemoryError as error:
            missing[batch] = f"out of memory ({str(error).splitlines()[0]})"
            torch.cuda.empty_cache()
            continue
        print(f"transformers generate, batch {batch:3d}: {run.tok_per_s:9.1f} tok/s  TTFT {run.ttft_s:7.3f} s  "
              f"TPOT {run.tpot_s * 1e3:7.1f} ms", file=sys.stderr, flush=True)
        runs.append(run)
    return runs, missing


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if unknown := set(args.apis) - set(APIS):
        raise SystemExit(f"unknown API: {', '.join(sorted(unknown))}; choose from {', '.join(APIS)}")
    os.environ["HF_HUB_OFFLINE"] = "1"
    stop_servers_on_sigterm()
    started, cpu_at_start = datetime.datetime.now().astimezone(), CpuSnapshot.take()
    stamp = started.strftime("%Y%m%d-%H%M%S")
    log_dir = args.results_dir / f"logs-shapes-{stamp}"
    machine = describe(ROOT)
    if args.commit:
        machine = dataclasses.replace(machine, commit=args.commit)
    config_dir = parse_spec(args.model).path
    config = json.loads((config_dir / "config.json").read_text())
    prompts = PromptSource(_prompt_vocab(config_dir, config["vocab_size"], args.cache_dir), args.seed)

    server_command, loads = _measure_tokenwire(args, prompts, log_dir)

    def save(runs: list[baseline.BaselineRun], missing: dict[int, str]) -> None:
        cpu_now = CpuSnapshot.take()
        result = ShapesResult(
            machine=machine, device=args.device, model=parse_spec(args.model).model_id, shape=_shape(config),
            dtype=args.dtype, prompt_tokens=args.prompt_tokens, max_tokens=args.max_tokens,
            requests_per_client=args.requests_per_client,
            command=shlex.join([shown(sys.executable), "-m", "bench.shapes", *argv]), server_command=server_command,
            started=started.strftime("%Y-%m-%d %H:%M %Z"), duration_s=cpu_now.at - cpu_at_start.at,
            other_work=other_work_share(cpu_at_start, cpu_now), loads=loads, baseline=runs, baseline_missing=missing,
        )
        args.results_dir.mkdir(parents=True, exist_ok=True)
        raw = args.results_dir / f"{shapes_report.section_key(result)}-{stamp}.json"
        raw.write_text(json.dumps(dataclasses.asdict(result), indent=1))
        shapes_report.write(result, args.output)
        print(f"wrote {args.output} and {raw}", file=sys.stderr)

    if args.baseline:
        # tokenwire's figures are kept even if the baseline never ends (a device's time runs out).
        save([], dict.fromkeys(args.clients, "not measured: the run ended before the baseline"))
        save(*_measure_baseline(args, config_dir, prompts))
    else:
        save([], {})


if __name__ == "__main__":
    main()
