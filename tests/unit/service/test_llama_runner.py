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

from service.engine.cpu.llama import LlamaRunner
from service.engine.cpu.quantized import Quantization
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


KV_CACHE_BYTES = 8 * 2**20


def _entry(sequence: int, tokens: list[int], start: int, logits_for: int = 1) -> StepEntry:
    """Sequence `sequence` in blocks of its own: 8 blocks from block 8 * sequence on."""
    return StepEntry(sequence, list(range(8 * sequence, 8 * sequence + 8)), tokens, start, logits_for)


def _greedy(runner, prompt: list[int], new_tokens: int, chunk: int) -> list[int]:
    """Greedy decoding through runner steps, the prompt fed in chunks of `chunk` tokens."""
    for start in range(0, len(prompt), chunk):
        piece = prompt[start : start + chunk]
        logits = runner.step([_entry(1, piece, start, logits_for=int(start + len(piece) == len(prompt)))])
    tokens = []
    for position in range(len(prompt), len(prompt) + new_tokens):
        tokens.append(int(logits[-1].argmax()))
        logits = runner.step([_entry(1, [tokens[-1]], position)])
    runner.release(1)
    return tokens


def _reference(model, prompt: list[int], new_tokens: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False)
    return out[0, len(prompt) :].tolist()


@pytest.fixture(params=[pytest.param("native", marks=needs_native_kernels), "torch"])
def attention(request) -> str:
    """Attention through tokenwire's kernel, or through torch's products where the kernel is not
    built."""
    if request.param == "torch":
        request.getfixturevalue("without_native_kernels")
    return request.param


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lean_runner_matches_transformers_greedy(variant, attention):
    model = _random_model(VARIANTS[variant])
    runner = create_runner(model, kv_cache_bytes=KV_CACHE_BYTES, max_length=256)
    assert isinstance(runner, LlamaRunner)
    assert runner.native_attention == (attention == "native")
    prompt = torch.randint(3, 256, (45,), generator=torch.Generator().manual_seed(1)).tolist()
    assert _greedy(runner, prompt, 16, chunk=20) == _reference(model, prompt, 16)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lean_runner_logits_match_transformers(variant, attention):
    model = _random_model(VARIANTS[variant])
    runner = create_runner(model, kv_cache_bytes=KV_CACHE_BYTES, max_length=256)
    prompt = torch.randint(3, 256, (70,), generator=torch.Generator().manual_seed(2)).tolist()
    ours = runner.step([_entry(1, prompt, 0, logits_for=len(prompt))])
    with torch.inference_mode():
        theirs = model(torch.tensor([prompt])).logits[0]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def batched_and_solo_logits(runner) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of a step where two sequences decode while a third prefills, and each row's
    logits from steps of its own."""
    prompts = [[5, 6, 7, 8, 9], [10, 11], list(range(12, 60))]
    solo = [runner.step([_entry(1, prompt, 0)])[0] for prompt in prompts]
    runner.step([_entry(1, prompts[0][:-1], 0), _entry(2, prompts[1][:-1], 0)])
    batched = runner.step([
        _entry(1, prompts[0][-1:], len(prompts[0]) - 1),
        _entry(3, prompts[2], 0),
        _entry(2, prompts[1][-1:], len(prompts[1]) - 1),
    ])
    return batched, torch.stack([solo[0], solo[2], solo[1]])


def test_a_batched_step_gives_each_row_its_solo_logits(attention):
    model = _random_model(VARIANTS["gqa"])
    runner = create_runner(model, kv_cache_bytes=KV_CACHE_BYTES, max_length=256)
    assert runner.native_attention == (attention == "native")
    batched, expected = batched_and_solo_logits(runner)
    if attention == "native":  # every row through kernels that compute it alike in any batch
        assert torch.equal(batched, expected)
    else:  # torch's products: a row's last bits can depend on the rows beside it
        torch.testing.assert_close(batched, expected, atol=1e-5, rtol=1e-5)


@needs_native_kernels
@pytest.mark.parametrize("quantization", [Quantization.NONE, Quantization.INT8, Quantization.INT4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_token_computes_alike_in_a_prompt_chunk_and_as_a_decode_token(quantization, dtype):
    """What prefix caching and preemption rest on: a position's logits, and so its keys and
    values, are the same bits whether it came in one long chunk, in chunks cut anywhere, or token
    by token, in a step of its own or beside other sequences."""
    model = _random_model(VARIANTS["gqa"])
    runner = create_runner(model, kv_cache_bytes=KV_CACHE_BYTES, max_length=256, dtype=dtype, quantization=quantization)
    tokens = torch.randint(3, 256, (77,), generator=torch.Generator().manual_seed(5)).tolist()
    whole = runner.step([_entry(1, tokens, 0, logits_for=len(tokens))])
    pieces, start = [], 0
    for size in (1, 40, 2, 1, 33):  # chunks cut off the block boundaries, decode-sized ones among them
        pieces.append(runner.step([
            _entry(2, tokens[start : start + size], start, logits_for=size),
            _entry(3, tokens[:9], 0, logits_for=1),  # another sequence beside it
        ])[:size])
        start += size
    assert torch.equal(torch.cat(pieces), whole)


def test_other_architectures_fall_back_to_transformers():
    model = _random_model(GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=256))
    runner = create_runner(model, kv_cache_bytes=KV_CACHE_BYTES, max_length=256)
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
    runner = create_runner(model, kv_cache_bytes=KV_CACHE_BYTES, max_length=256)
    prompts = [list(range(3, 20)), list(range(40, 45)), list(range(100, 130))]
    solo = [_reference(model, prompt, 10) for prompt in prompts]

    forwards: list[int] = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda **kwargs: forwards.append(kwargs["input_ids"].shape[0]) or forward(**kwargs))
    sequences = [1, 2, 3]
    logits = runner.step([_entry(sequence, prompt, 0) for sequence, prompt in zip(sequences, prompts)])
    tokens: list[list[int]] = [[] for _ in prompts]
    positions = [len(prompt) for prompt in prompts]
    for _ in range(10):
        for row, token in enumerate(logits.argmax(-1).tolist()):
            tokens[row].append(token)
        logits = runner.step([_entry(sequence, [tokens[row][-1]], positions[row]) for row, sequence in enumerate(sequences)])
        positions = [position + 1 for position in positions]
    assert tokens == solo
    assert forwards == [1, 1, 1] + [3] * 10  # prompts one by one, then every decode step batched


@pytest.mark.parametrize("quantization", list(Quantization))
def test_the_runner_keeps_none_of_the_loaded_weights(quantization):
    """The loaded (float32) model is dropped once the runner has its own copies: quantizing must
    not leave autograd records that hold the original weights."""
    model = _random_model(VARIANTS["gqa"])
    original = weakref.ref(model.model.layers[0].mlp.gate_proj.weight)
    runner = create_runner(
        model, kv_cache_bytes=KV_CACHE_BYTES, max_length=64, dtype=torch.bfloat16, quantization=quantization
    )
    del model
    gc.collect()
    assert original() is None
    assert runner.step([_entry(1, [1, 2, 3], 0)]).shape == (1, 256)
