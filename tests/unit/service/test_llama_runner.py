"""The lean Llama-family runner against transformers on tiny random-weight models of each variant
the reference models use, and the transformers fallback for other architectures."""
from __future__ import annotations

import gc
import weakref

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)

from service.engine.llama import LlamaRunner
from service.engine.quantized import Quantization
from service.engine.runner import TransformersRunner, create_runner
from service.engine.types import StepEntry
from tests.unit.service.conftest import needs_native_kernels

SMALL = dict(vocab_size=256, hidden_size=128, intermediate_size=128, num_hidden_layers=2, max_position_embeddings=256)

VARIANTS = {
    # Grouped-query attention, as Llama-3.1, SmolLM2 and Yi use it.
    "gqa": LlamaConfig(**SMALL, num_attention_heads=4, num_key_value_heads=2),
    # Llama-3.1's rope scaling.
    "llama3_rope": LlamaConfig(
        **SMALL, num_attention_heads=4, num_key_value_heads=2,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    ),
    # Qwen2: biases on the q, k and v projections.
    "qkv_bias": Qwen2Config(**SMALL, num_attention_heads=4, num_key_value_heads=2),
    # Mistral-Nemo: head_dim given explicitly, not hidden_size / heads.
    "explicit_head_dim": MistralConfig(**SMALL, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                       sliding_window=None),
}


def _random_model(config) -> torch.nn.Module:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # random init leaves the biases at zero: make them count
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0, 0.5)
    return model


def _greedy(runner, prompt: list[int], new_tokens: int, chunk: int) -> list[int]:
    """Greedy decoding through runner steps, the prompt fed in chunks of `chunk` tokens."""
    slot = runner.allocate()
    for start in range(0, len(prompt), chunk):
        piece = prompt[start : start + chunk]
        logits = runner.step([StepEntry(slot, piece, start, logits_for=int(start + len(piece) == len(prompt)))])
    tokens = []
    for position in range(len(prompt), len(prompt) + new_tokens):
        tokens.append(int(logits[-1].argmax()))
        logits = runner.step([StepEntry(slot, [tokens[-1]], position)])
    runner.release(slot)
    return tokens


def _reference(model, prompt: list[int], new_tokens: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False)
    return out[0, len(prompt) :].tolist()


@pytest.fixture(params=[pytest.param("native", marks=needs_native_kernels), "torch"])
def decode_attention(request) -> str:
    """Decode attention through tokenwire's kernel, or through torch's products where the kernel
    is not built."""
    if request.param == "torch":
        request.getfixturevalue("without_native_kernels")
    return request.param


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lean_runner_matches_transformers_greedy(variant, decode_attention):
    model = _random_model(VARIANTS[variant])
    runner = create_runner(model, slots=2, max_length=256)
    assert isinstance(runner, LlamaRunner)
    assert runner._forward.native_attention == (decode_attention == "native")
    prompt = torch.randint(3, 256, (19,), generator=torch.Generator().manual_seed(1)).tolist()
    assert _greedy(runner, prompt, 16, chunk=8) == _reference(model, prompt, 16)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lean_runner_logits_match_transformers(variant):
    model = _random_model(VARIANTS[variant])
    runner = create_runner(model, slots=1, max_length=256)
    prompt = torch.randint(3, 256, (12,), generator=torch.Generator().manual_seed(2)).tolist()
    ours = runner.step([StepEntry(runner.allocate(), prompt, 0, logits_for=len(prompt))])
    with torch.inference_mode():
        theirs = model(torch.tensor([prompt])).logits[0]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_a_batched_step_gives_each_row_its_solo_logits(decode_attention):
    model = _random_model(VARIANTS["gqa"])
    runner = create_runner(model, slots=3, max_length=256)
    assert runner._forward.native_attention == (decode_attention == "native")
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18]]
    solo = []
    for prompt in prompts:
        slot = runner.allocate()
        solo.append(runner.step([StepEntry(slot, prompt, 0)])[0])
        runner.release(slot)
    # Two sequences decode while a third prefills, in one step.
    slots = [runner.allocate() for _ in prompts]
    runner.step([StepEntry(slots[0], prompts[0][:-1], 0), StepEntry(slots[1], prompts[1][:-1], 0)])
    batched = runner.step([
        StepEntry(slots[0], prompts[0][-1:], len(prompts[0]) - 1),
        StepEntry(slots[2], prompts[2], 0),
        StepEntry(slots[1], prompts[1][-1:], len(prompts[1]) - 1),
    ])
    torch.testing.assert_close(batched, torch.stack([solo[0], solo[2], solo[1]]), atol=1e-5, rtol=1e-5)


def test_other_architectures_fall_back_to_transformers():
    model = _random_model(GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=256))
    runner = create_runner(model, slots=2, max_length=256)
    assert isinstance(runner, TransformersRunner)
    prompt = list(range(3, 20))
    assert _greedy(runner, prompt, 12, chunk=6) == _reference(model, prompt, 12)


@pytest.mark.parametrize(
    "config",
    [
        GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=256),
        # Rotary positions, grouped-query attention, q/k norms: a family the lean runner lacks.
        Qwen3Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256),
    ],
    ids=["gpt2", "qwen3"],
)
def test_the_fallback_runs_decode_rows_as_one_batch_with_their_solo_tokens(config, monkeypatch):
    model = _random_model(config)
    runner = create_runner(model, slots=3, max_length=256)
    prompts = [list(range(3, 20)), list(range(40, 45)), list(range(100, 130))]
    solo = [_reference(model, prompt, 10) for prompt in prompts]

    forwards: list[int] = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda **kwargs: forwards.append(kwargs["input_ids"].shape[0]) or forward(**kwargs))
    slots = [runner.allocate() for _ in prompts]
    logits = runner.step([StepEntry(slot, prompt, 0) for slot, prompt in zip(slots, prompts)])
    tokens: list[list[int]] = [[] for _ in prompts]
    positions = [len(prompt) for prompt in prompts]
    for _ in range(10):
        for row, token in enumerate(logits.argmax(-1).tolist()):
            tokens[row].append(token)
        logits = runner.step([StepEntry(slot, [tokens[row][-1]], positions[row]) for row, slot in enumerate(slots)])
        positions = [position + 1 for position in positions]
    assert tokens == solo
    assert forwards == [1, 1, 1] + [3] * 10  # prompts one by one, then every decode step batched


@pytest.mark.parametrize("quantization", list(Quantization))
def test_the_runner_keeps_none_of_the_loaded_weights(quantization):
    """The loaded (float32) model is dropped once the runner has its own copies: quantizing must
    not leave autograd records that hold the original weights."""
    model = _random_model(VARIANTS["gqa"])
    original = weakref.ref(model.model.layers[0].mlp.gate_proj.weight)
    runner = create_runner(model, slots=2, max_length=64, dtype=torch.bfloat16, quantization=quantization)
    del model
    gc.collect()
    assert original() is None
    assert runner.step([StepEntry(runner.allocate(), [1, 2, 3], 0)]).shape == (1, 256)
