"""Fixtures of the service unit tests: a mark for the tests that need tokenwire's C++ kernels
(service/engine/native.py) built and runnable here, and a fixture that makes the code under test
fall back to torch's kernels, as on a machine without a compiler or AVX512-VNNI."""
from __future__ import annotations

import pytest

from service.engine import native

needs_native_kernels = pytest.mark.skipif(not native.available(), reason="needs a C++ compiler and AVX512-VNNI")


@pytest.fixture
def without_native_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """For layers and runners built inside the test."""
    monkeypatch.setattr(native, "available", lambda directory=None: False)
