"""--load-format dummy: a model of a real shape with random weights, from its config.json alone."""
from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch
from transformers import AutoConfig, LlamaConfig

from service.config import add_worker_arguments, checked_settings
from service.engine.llama_family import lean_support_problem
from service.engine.types import GenerationRequest, SamplingParams, StoppingParams
from service.models.dummy import random_model
from service.models.loading import load_generation_model
from service.models.reference import REFERENCE_MODELS
from tokenwire.startup import StartupError

# Parameter counts as their model cards publish them (in billions, rounded).
PUBLISHED_SIZES = {
    "meta-llama/Llama-3.1-8B-Instruct": 8.03,
    "Qwen/Qwen2-7B-Instruct": 7.62,
    "mistralai/Mistral-Nemo-Instruct-2407": 12.25,
    "01-ai/Yi-34B-Chat": 34.39,
}


@pytest.mark.parametrize("model_id", sorted(REFERENCE_MODELS))
def test_reference_configs_have_the_published_shapes_and_run_on_the_lean_runner(model_id):
    assert set(REFERENCE_MODELS) == set(PUBLISHED_SIZES)
    config_dir = REFERENCE_MODELS[model_id]
    model = random_model(config_dir, torch.bfloat16, torch.device("meta"))  # shapes, no memory
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 2) == PUBLISHED_SIZES[model_id]
    assert lean_support_problem(AutoConfig.from_pretrained(config_dir)) is None


def _parse(argv: list[str]):
    parser = argparse.ArgumentParser()
    add_worker_arguments(parser)
    return parser.parse_args(["--no-default-models", *argv])


def test_a_config_without_weights_needs_the_dummy_format():
    with pytest.raises(StartupError) as raised:
        checked_settings(_parse(["--model", "meta-llama/Llama-3.1-8B-Instruct"]))
    assert str(raised.value) == (
        "--model meta-llama/Llama-3.1-8B-Instruct: has no weight files "
        "(--load-format dummy serves its config with random weights)"
    )
    settings = checked_settings(_parse(["--model", "meta-llama/Llama-3.1-8B-Instruct", "--load-format", "dummy"]))
    assert (settings.generation_models, settings.load_format) == (("meta-llama/Llama-3.1-8B-Instruct",), "dummy")


def test_the_dummy_format_needs_a_config(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(StartupError, match="needs a directory with a config.json"):
        checked_settings(_parse(["--model", str(tmp_path / "model.gguf"), "--load-format", "dummy"]))


async def test_a_config_alone_is_served_with_the_same_random_weights_every_time(tmp_path, worker_settings, tokenizer):
    # Three times the tokenizer's vocabulary: random logits would mostly pick ids it cannot decode.
    config = LlamaConfig(
        vocab_size=3 * len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
    )
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    settings = dataclasses.replace(worker_settings, load_format="dummy")
    prompt = tuple(tokenizer.encode("The capital of France is"))

    async def load_and_generate() -> tuple[str, list[int]]:
        model = load_generation_model(f"acme/shape={tmp_path}", settings)
        model.engine.start()
        try:
            request = GenerationRequest(
                request_id="d", prompt_ids=prompt, sampling=SamplingParams(temperature=0.0),
                stopping=StoppingParams(max_new_tokens=24, ignore_eos=True),
            )
            return model.card.version, [t async for u in model.engine.submit(request) for t in u.token_ids]
        finally:
            model.engine.stop()

    first_version, first = await load_and_generate()
    second_version, second = await load_and_generate()
    assert first_version == second_version
    assert len(first) == 24 and first == second
    assert max(first) < len(tokenizer)
    assert len(set(first)) > 1  # random weights, not a constant
