"""The shapes bench's BENCHMARKS.md section: the issue's targets met or missed, and the section
rewritten in place."""
from __future__ import annotations

import dataclasses

from bench import shapes_report
from bench.baseline import BaselineRun
from bench.machine import Machine
from bench.shapes_report import ApiLoad, ShapesResult
from bench.timings import GRPC, REST, RequestTiming, summarize

H100 = Machine(cpu="Intel Xeon", cores=16, memory_gib=125.0, gpu="NVIDIA H100 80GB HBM3, 81559 MiB", os="Linux",
               python="3.12.3", packages={"torch": "2.11.0"}, commit="abc1234")


def _load(api: str, clients: int, seconds_per_token: float, ttft_s: float, tokens: int = 128) -> ApiLoad:
    end = ttft_s + seconds_per_token * (tokens - 1)
    timings = [RequestTiming(0.0, ttft_s, end, tokens) for _ in range(clients)]
    return ApiLoad(api, clients, summarize(timings), timings)


def _result(**changes) -> ShapesResult:
    result = ShapesResult(
        machine=H100, device="cuda", model="meta-llama/Llama-3.1-8B-Instruct", shape="LlamaForCausalLM: 32 layers",
        dtype="bfloat16", prompt_tokens=1024, max_tokens=128, requests_per_client=1,
        command="python -m bench.shapes", server_command="python -m tokenwire.cli serve",
        started="2026-12-06 16:00 UTC",
        duration_s=300.0, other_work=0.0,
        loads=[
            # 1 client: 128 tokens in 0.1 + 127 × 0.005 s = 0.735 s, 174 tok/s: met.
            _load(GRPC, 1, 0.005, 0.1),
            # REST, 1 client: 128 tokens in 1.37 s, 93 tok/s: missed.
            _load(REST, 1, 0.01, 0.1),
            # 64 clients: 8,192 tokens in 0.8 + 127 × 0.01 s = 2.07 s, 3,957 tok/s: missed.
            _load(GRPC, 64, 0.01, 0.8),
            # 64 clients: 8,192 tokens in 0.5 + 127 × 0.0075 s = 1.4525 s, 5,640 tok/s and TTFT 0.5 s: met.
            _load(REST, 64, 0.0075, 0.5),
        ],
        baseline=[BaselineRun(batch=1, output_tokens=128, wall_s=4.0, ttft_s=0.05, tpot_s=0.03),
                  BaselineRun(batch=64, output_tokens=8192, wall_s=8.0, ttft_s=1.5, tpot_s=0.05)],
        baseline_missing={},
    )
    return dataclasses.replace(result, **changes)


def _target_rows(markdown: str) -> dict[str, str]:
    """Target → "measured | met" from the Targets table."""
    section = markdown.split("### Targets", 1)[1].split("###", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    rows = [line.strip("|").split(" | ") for line in lines]
    return {cells[0].strip(): " | ".join(cell.strip() for cell in cells[1:]) for cells in rows[1:]}


def test_each_target_is_measured_on_each_api_and_a_miss_says_so():
    rows = _target_rows(shapes_report.render_section(_result()))
    assert rows == {
        "1 client, gRPC GenerateStream: ≥ 150 output tok/s": "174.1 tok/s | yes",
        "64 clients, gRPC GenerateStream: ≥ 5,000 output tok/s with TTFT p50 ≤ 1 s":
            "3,957.5 tok/s, TTFT p50 800 ms | **no**",
        "64 clients, gRPC GenerateStream: ≥ 5× transformers generate (batch 64)":
            "3.86× (3,957.5 vs 1,024.0 tok/s) | **no**",
        "1 client, REST /v1/completions, streaming: ≥ 150 output tok/s": "93.4 tok/s | **no**",
        "64 clients, REST /v1/completions, streaming: ≥ 5,000 output tok/s with TTFT p50 ≤ 1 s":
            "5,639.9 tok/s, TTFT p50 500 ms | yes",
        "64 clients, REST /v1/completions, streaming: ≥ 5× transformers generate (batch 64)":
            "5.51× (5,639.9 vs 1,024.0 tok/s) | yes",
    }


def test_a_run_off_the_issues_configuration_says_its_targets_are_for_reference():
    assert "for reference only" not in shapes_report.render_section(_result())
    assert _result().is_reference
    for change in ({"device": "cpu"}, {"prompt_tokens": 256}, {"dtype": "float32"}, {"model": "tiny"}):
        assert "for reference only" in shapes_report.render_section(_result(**change))


def test_a_baseline_batch_that_did_not_fit_is_reported_as_missing():
    markdown = shapes_report.render_section(_result(baseline=[], baseline_missing={64: "out of memory"}))
    rows = _target_rows(markdown)
    target = "64 clients, gRPC GenerateStream: ≥ 5× transformers generate (batch 64)"
    assert rows[target] == "n/a (out of memory) | n/a"
    assert "| 64 | n/a: out of memory |" in markdown


def test_failed_requests_are_counted_and_the_first_error_is_shown():
    timings = [RequestTiming(0.0, 0.1, 1.0, 128), RequestTiming(0.0, None, 5.0, 0, "DEADLINE_EXCEEDED: Deadline")]
    failing = ApiLoad(GRPC, 2, summarize(timings), timings)
    markdown = shapes_report.render_section(_result(loads=[failing]))
    assert "| gRPC GenerateStream | 2 | 2 | 25.6 |" in markdown
    assert markdown.count("DEADLINE_EXCEEDED") == 1
    assert "First error of gRPC GenerateStream at 2 clients: `DEADLINE_EXCEEDED: Deadline`" in markdown


def test_the_section_is_rewritten_in_place_beside_the_other_devices(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n<!-- bench section: cpu -->\nthe CPU figures\n"
                    "<!-- end of bench section: cpu -->\n")
    shapes_report.write(_result(started="first run"), path)
    shapes_report.write(_result(started="second run"), path)
    text = path.read_text()
    assert "the CPU figures" in text
    assert text.count("## GPU: NVIDIA H100 80GB HBM3, 81559 MiB: meta-llama/Llama-3.1-8B-Instruct shape") == 1
    assert "second run" in text and "first run" not in text
