"""Shared fixtures: the real default models, loaded once per test session, and the tiers.

A test that needs the real models (loaded in this process, or served by a worker) is marked
`model` without saying so: it asks for one of MODEL_FIXTURES, or its module is marked. `make
test-unit` runs the unit tests that are not (`-m "not model"`), in well under a minute.
"""
from __future__ import annotations

import argparse
import os
import pathlib

import pytest

from service.config import default_cache_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Converted weights are cached across runs (and shared with `make serve`); TOKENWIRE_CACHE_DIR
# moves them, as it moves the worker's.
CACHE_DIR = default_cache_dir()
# Fixtures that load the real default models (hf_model: tests/unit/service/test_engine.py).
MODEL_FIXTURES = frozenset({"generation_model", "hf_model", "worker_address", "bridge_url", "secured_stack"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if MODEL_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)


@pytest.fixture(scope="session")
def worker_settings():
    from service.config import WorkerSettings, add_worker_arguments

    parser = argparse.ArgumentParser()
    add_worker_arguments(parser)
    return WorkerSettings.from_args(parser.parse_args(["--cache-dir", str(CACHE_DIR)]))


@pytest.fixture(scope="session")
def generation_model(worker_settings):
    """The default generation model with its engine running."""
    from service.models.loading import load_generation_model

    model = load_generation_model(worker_settings.generation_models[0], worker_settings)
    model.engine.start()
    yield model
    model.engine.stop()


@pytest.fixture(scope="session")
def tokenizer():
    """The default generation model's tokenizer alone: no weights are converted or loaded."""
    from transformers import AutoTokenizer

    from service.models.packaged import DEFAULT_GENERATION_MODEL
    from service.models.weights import gguf_tokenizer_dir

    return AutoTokenizer.from_pretrained(gguf_tokenizer_dir(DEFAULT_GENERATION_MODEL.locate(), CACHE_DIR))


@pytest.fixture(scope="session")
def worker_metrics_port() -> int:
    from tests.servers import free_port

    return free_port()


@pytest.fixture(scope="session")
def worker_address(tmp_path_factory, worker_metrics_port):
    """A real worker with the default models, on a free loopback port."""
    from tests.servers import start_worker

    address, process = start_worker(
        tmp_path_factory.mktemp("logs"), "--cache-dir", str(CACHE_DIR), "--metrics-port", str(worker_metrics_port)
    )
    yield address
    process.stop()


@pytest.fixture(scope="session")
def worker_metrics_url(worker_address, worker_metrics_port) -> str:
    """The Prometheus metrics of the `worker_address` worker."""
    return f"http://127.0.0.1:{worker_metrics_port}/metrics"


@pytest.fixture(scope="session")
def bridge_data_dir(tmp_path_factory) -> pathlib.Path:
    """Where the session's bridge keeps its files, batches and stored responses."""
    return tmp_path_factory.mktemp("bridge-data")


@pytest.fixture(scope="session")
def bridge_url(worker_address, bridge_data_dir, tmp_path_factory):
    """A real bridge in front of `worker_address`, e.g. http://127.0.0.1:PORT (no /v1)."""
    from tests.servers import start_bridge

    url, process = start_bridge(tmp_path_factory.mktemp("logs"), worker_address, data_dir=bridge_data_dir)
    yield url
    process.stop()
