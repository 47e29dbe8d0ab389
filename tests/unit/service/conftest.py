"""Fixtures of the service unit tests: a mark for the tests that need tokenwire's C++ kernels
(service/engine/cpu/native.py) built and runnable here, and a fixture that makes the code under test
fall back to torch's kernels, as on a machine without a compiler or AVX512-VNNI."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from service.engine.cpu import native
from service.models.loading import parse_spec
from service.models.weights import converted_gguf_dir, weights_version
from tests.conftest import CACHE_DIR

# Loaded here, as the worker loads them before it builds any layer.
needs_native_kernels = pytest.mark.skipif(
    not native.load(CACHE_DIR / "kernels"), reason="needs a C++ compiler and AVX512-VNNI"
)


@pytest.fixture
def without_native_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """For layers and runners built inside the test."""
    monkeypatch.setattr(native, "available", lambda: False)


@pytest.fixture(scope="session")
def hf_model(worker_settings):
    """The default model's weights as a plain transformers model, in float32."""
    source = parse_spec(worker_settings.generation_models[0])
    version = weights_version(source.path, worker_settings.cache_dir)
    directory = converted_gguf_dir(source.path, version, worker_settings.cache_dir)
    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
