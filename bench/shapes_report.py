"""The shapes bench's result and its BENCHMARKS.md section: tokenwire on both APIs beside
transformers' generate, with the issue's GPU targets, measured and met or missed."""
from __future__ import annotations

import pathlib
from dataclasses import dataclass

from bench import markdown
from bench.baseline import BaselineRun
from bench.machine import Machine
from bench.timings import API_LABELS, APIS, LoadFigures, RequestTiming

# The configuration: the Llama-3.1-8B shape in bf16 on one GPU, 1,024-token prompts, 128
# output tokens, 1 and 64 clients. Its targets are stated for it alone.
REFERENCE_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
REFERENCE_DTYPE = "bfloat16"
REFERENCE_PROMPT_TOKENS = 1024
REFERENCE_MAX_TOKENS = 128
REFERENCE_CLIENTS = (1, 64)
TARGET_CONCURRENT_TOK_S = 5000.0
TARGET_CONCURRENT_TTFT_P50_S = 1.0
TARGET_SINGLE_TOK_S = 150.0
TARGET_VS_TRANSFORMERS = 5.0

_HEADER = "# Benchmarks\n\nWritten by `bench/` (`make bench`, `make bench-shapes`).\n"


@dataclass(frozen=True)
class ApiLoad:
    """One load on one API: `clients` concurrent clients, their requests' timings and figures."""

    api: str
    clients: int
    figures: LoadFigures
    timings: list[RequestTiming]

    @property
    def first_error(self) -> str | None:
        return next((t.error for t in self.timings if t.error), None)


@dataclass(frozen=True)
class ShapesResult:
    """Everything one run measured, with what is needed to reproduce it."""

    machine: Machine
    device: str
    model: str
    # The model's shape in words (architecture, layers, widths), from its config.json.
    shape: str
    dtype: str
    prompt_tokens: int
    max_tokens: int
    requests_per_client: int
    # The bench's command line, and the tokenwire server's as it started.
    command: str
    server_command: str
    started: str
    duration_s: float
    other_work: float
    loads: list[ApiLoad]
    baseline: list[BaselineRun]
    # Why a batch of the baseline has no figures (out of memory, not asked for).
    baseline_missing: dict[int, str]

    @property
    def clients(self) -> list[int]:
        return sorted({load.clients for load in self.loads} | {run.batch for run in self.baseline})

    @property
    def is_reference(self) -> bool:
        """Whether this is the configuration the issue's targets are stated for."""
        return (self.device.startswith("cuda") and self.model == REFERENCE_MODEL and self.dtype == REFERENCE_DTYPE
                and self.prompt_tokens == REFERENCE_PROMPT_TOKENS and self.max_tokens == REFERENCE_MAX_TOKENS
                and set(REFERENCE_CLIENTS) <= set(self.clients))

    def load(self, api: str, clients: int) -> ApiLoad | None:
        return next((load for load in self.loads if load.api == api and load.clients == clients), None)

    def baseline_run(self, batch: int) -> BaselineRun | None:
        return next((run for run in self.baseline if run.batch == batch), None)


def section_key(result: ShapesResult) -> str:
    return markdown.section_key(f"shapes {result.machine.device_label(result.device)} {result.model}")


def _targets(result: ShapesResult) -> list[str]:
    """The issue's targets on each API: the most clients of the run stand for its 64."""
    single, most = (1 if 1 in result.clients else None), max(result.clients, default=None)
    rows = []
    for api in APIS:
        label = API_LABELS[api]
        if single and (load := result.load(api, single)):
            rate = load.figures.tok_per_s
            rows.append((f"1 client, {label}: ≥ {TARGET_SINGLE_TOK_S:,.0f} output tok/s", f"{rate:,.1f} tok/s",
                         markdown.met(rate >= TARGET_SINGLE_TOK_S)))
        if not most or most == 1 or not (load := result.load(api, most)):
            continue
        rate, ttft = load.figures.tok_per_s, load.figures.ttft_p50_s
        rows.append((f"{most} clients, {label}: ≥ {TARGET_CONCURRENT_TOK_S:,.0f} output tok/s with TTFT p50 "
                     f"≤ {TARGET_CONCURRENT_TTFT_P50_S:g} s",
                     f"{rate:,.1f} tok/s, TTFT p50 {_duration(ttft)}",
                     markdown.met(rate >= TARGET_CONCURRENT_TOK_S and ttft is not None
                                  and ttft <= TARGET_CONCURRENT_TTFT_P50_S)))
        peer = result.baseline_run(most)
        target = f"{most} clients, {label}: ≥ {TARGET_VS_TRANSFORMERS:g}× transformers generate (batch {most})"
        if peer is None:
            rows.append((target, f"n/a ({result.baseline_missing.get(most, 'no baseline')})", "n/a"))
        else:
            ratio = rate / peer.tok_per_s
            rows.append((target, f"{ratio:.2f}× ({rate:,.1f} vs {peer.tok_per_s:,.1f} tok/s)",
                         markdown.met(ratio >= TARGET_VS_TRANSFORMERS)))
    lines = ["### Targets", ""]
    if not result.is_reference:
        lines += [f"This run is not the configuration the targets are stated for ({REFERENCE_MODEL} shape, "
                  f"{REFERENCE_DTYPE}, on a GPU, {REFERENCE_PROMPT_TOKENS:,}-token prompts, {REFERENCE_MAX_TOKENS} "
                  f"output tokens, {' and '.join(map(str, REFERENCE_CLIENTS))} clients): they are shown for "
                  "reference only.", ""]
    return [*lines, *markdown.table(("target", "measured", "met"), rows), ""]


def _duration(seconds: float | None) -> str:
    return "n/a" if seconds is None else markdown.duration(seconds)


def _tokenwire(result: ShapesResult) -> list[str]:
    rows = []
    for load in sorted(result.loads, key=lambda load: (load.clients, APIS.index(load.api))):
        f = load.figures
        rows.append((API_LABELS[load.api], str(load.clients), str(f.requests), f"{f.tok_per_s:,.1f}",
                     _duration(f.ttft_p50_s), _duration(f.ttft_p95_s), _ms(f.tpot_p50_s), _ms(f.tpot_p95_s),
                     str(f.errors)))
    lines = [f"### tokenwire: random {result.prompt_tokens:,}-token prompts, {result.max_tokens} output tokens", "",
             f"Each load: that many concurrent clients, each sending {result.requests_per_client} requests one after "
             "another; every prompt is random token ids starting with an id no other prompt starts with, so the "
             "prefix cache cannot help. Greedy, `ignore_eos`: every request makes exactly its output tokens. "
             "Output tok/s: all output tokens of a load over its wall time. TTFT: send to first token; TPOT "
             "(time per output token): (last token − first token) / (tokens − 1), per request. Both APIs were "
             "warmed up first with one request per client of the largest load.", "",
             *markdown.table(("API", "clients", "requests", "output tok/s", "TTFT p50", "TTFT p95", "TPOT p50",
                              "TPOT p95", "errors"), rows), ""]
    errors = [(load, error) for load in result.loads if (error := load.first_error)]
    lines += [f"First error of {API_LABELS[load.api]} at {load.clients} clients: `{error}`" for load, error in errors]
    return [*lines, *([""] if errors else []), f"Server: `{result.server_command}`", ""]


def _baseline(result: ShapesResult) -> list[str]:
    rows = [(str(run.batch), f"{run.tok_per_s:,.1f}", _duration(run.ttft_s), _ms(run.tpot_s))
            for run in sorted(result.baseline, key=lambda run: run.batch)]
    rows += [(str(batch), f"n/a: {reason}", "", "") for batch, reason in sorted(result.baseline_missing.items())]
    ratio_rows = []
    for clients in result.clients:
        if peer := result.baseline_run(clients):
            loads = [result.load(api, clients) for api in APIS]
            cells = [f"{load.figures.tok_per_s / peer.tok_per_s:.2f}×" if load else "n/a" for load in loads]
            ratio_rows.append((str(clients), *cells))
    lines = ["### Baseline: transformers `generate`, one static batch", "",
             "The same random weights (the same config and seed as `--load-format dummy`), in the same process "
             "after tokenwire stopped, on the same device and dtype; batch B stands beside B clients. Greedy, "
             "`min_new_tokens` = `max_new_tokens`, after one warm-up call. TTFT is the whole batch's prefill "
             "and first token; TPOT is per decoding step (bench/baseline.py says why not "
             "`transformers serve --continuous-batching`).", "",
             *markdown.table(("batch", "output tok/s", "TTFT", "TPOT"), rows), ""]
    if ratio_rows:
        lines += ["Output tok/s ratio, tokenwire / transformers, same run:", "",
                  *markdown.table(("clients", *(API_LABELS[api] for api in APIS)), ratio_rows), ""]
    return lines


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.1f} ms"


def render_section(result: ShapesResult) -> str:
    lines = [f"## {result.machine.device_label(result.device)}: {result.model} shape, {result.dtype}, random weights",
             "", f"{result.shape}. Measured {result.started} at commit {result.machine.commit}; the run took "
             f"{result.duration_s / 60:.1f} min. Reproduce with:", "", "```sh", result.command, "```", "",
             *markdown.other_work_note(result.other_work), *_targets(result), *_tokenwire(result)]
    if result.baseline or result.baseline_missing:
        lines += _baseline(result)
    lines += markdown.machine_section(result.machine, result.other_work)
    return "\n".join(lines)


def write(result: ShapesResult, path: pathlib.Path) -> None:
    """Puts this run's section into `path`, replacing the previous one of the same device and model."""
    markdown.write_section(path, section_key(result), render_section(result), _HEADER)
