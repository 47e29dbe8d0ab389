"""Serving a model other than the defaults: any Llama-family HF directory, by flag."""
from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from service.engine.types import GenerationRequest, SamplingParams, StoppingParams
from service.models.loading import load_generation_model
from service.models.registry import ModelRegistry


async def test_an_hf_directory_is_served_under_its_given_id(tmp_path, worker_settings, tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    model = load_generation_model(f"acme/tiny-llama={tmp_path}", worker_settings)
    registry = ModelRegistry()
    registry.add(model)
    registry.ready = True
    card = model.card
    assert (card.model_id, card.context_length, card.owned_by) == ("acme/tiny-llama", 512, "acme")
    assert registry.find(f"acme/tiny-llama:{card.version}") is model
    assert registry.find(f"deploy_id:{card.deploy_id}") is model

    model.engine.start()
    try:
        request = GenerationRequest(
            request_id="t", prompt_ids=tuple(tokenizer.encode("Hello")), sampling=SamplingParams(temperature=0.0),
            stopping=StoppingParams(max_new_tokens=5, ignore_eos=True),
        )
        updates = [u async for u in model.engine.submit(request)]
        assert sum(len(u.token_ids) for u in updates) == 5
    finally:
        model.engine.stop()
