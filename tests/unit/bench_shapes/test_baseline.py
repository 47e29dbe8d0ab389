"""The transformers baseline on a tiny random Llama, and the CPU smoke shape's config."""
from __future__ import annotations

import json
import pathlib

import torch

from bench import baseline
from bench.timings import PromptSource
from service.models.dummy import random_model

SMOKE_CONFIG = pathlib.Path(__file__).resolve().parents[3] / "bench" / "configs" / "smollm2-135m-instruct"


def test_generate_times_a_static_batch_that_runs_to_max_tokens(tmp_path):
    tiny = json.loads((SMOKE_CONFIG / "config.json").read_text())
    tiny.update(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, vocab_size=512)
    (tmp_path / "config.json").write_text(json.dumps(tiny))
    model = baseline.load(tmp_path, "cpu", "float32")
    prompts = PromptSource(range(10, 512)).take(3, 12)
    run = baseline.generate(model, prompts, max_tokens=6)
    assert (run.batch, run.output_tokens) == (3, 18)
    assert 0 < run.ttft_s < run.wall_s
    assert run.tpot_s > 0 and run.tok_per_s == run.output_tokens / run.wall_s


def test_the_cpu_smoke_shape_is_smollm2_135m():
    model = random_model(SMOKE_CONFIG, torch.bfloat16, torch.device("meta"))  # shapes, no memory
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == 135
