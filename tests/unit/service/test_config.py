"""Worker flags: prices, API keys, the metrics port, the KV-cache memory; every command's help."""
from __future__ import annotations

import argparse

import pytest

from service.config import (
    MemoryBudget,
    Price,
    WorkerSettings,
    add_worker_arguments,
    parse_memory_budget,
    parse_price,
)


def settings(argv: list[str], **defaults: int) -> WorkerSettings:
    parser = argparse.ArgumentParser()
    add_worker_arguments(parser, **defaults)
    return WorkerSettings.from_args(parser.parse_args(argv))


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PRICES", "API_KEYS", "METRICS_PORT"):
        monkeypatch.delenv(f"TOKENWIRE_{name}", raising=False)


def test_parse_price() -> None:
    assert parse_price("org/model=0.03,0.05") == ("org/model", Price(0.03, 0.05))
    assert parse_price("m=0,0") == ("m", Price(0.0, 0.0))


@pytest.mark.parametrize("spec", ["org/model", "=1,2", "m=1", "m=1,2,3", "m=a,b", "m=-1,2", "m=inf,1", "m=nan,1"])
def test_malformed_prices_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="MODEL_ID=INPUT,OUTPUT"):
        parse_price(spec)


def test_defaults_have_no_prices_no_keys_no_metrics() -> None:
    worker = settings([])
    assert (dict(worker.prices), worker.api_keys, worker.metrics_port) == ({}, (), 0)


def test_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENWIRE_PRICES", "a/b=1,2;c=0.5,0")
    monkeypatch.setenv("TOKENWIRE_API_KEYS", "k1")
    worker = settings(["--price", "d=3,4", "--api-key", "k2", "--metrics-port", "9500"])
    assert worker.prices == {"a/b": Price(1, 2), "c": Price(0.5, 0), "d": Price(3, 4)}
    assert worker.api_keys == ("k1", "k2")
    assert worker.metrics_port == 9500


def test_metrics_port_default_of_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings([], metrics_port=9400).metrics_port == 9400
    monkeypatch.setenv("TOKENWIRE_METRICS_PORT", "0")
    assert settings([], metrics_port=9400).metrics_port == 0


@pytest.mark.parametrize("command", ["worker", "bridge", "serve"])
def test_every_command_prints_its_help(command, capsys):
    from tokenwire.cli import main

    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0 and "usage: tokenwire" in capsys.readouterr().out


@pytest.mark.parametrize(
    "spec,expected",
    [("auto", MemoryBudget()), ("4GiB", MemoryBudget(bytes=4 * 2**30)), ("512M", MemoryBudget(bytes=512 * 10**6)),
     ("0.9", MemoryBudget(fraction=0.9)), ("2e9", MemoryBudget(bytes=2 * 10**9))],
)
def test_kv_cache_memory_takes_bytes_or_a_fraction(spec, expected):
    assert parse_memory_budget(spec) == expected


@pytest.mark.parametrize("spec", ["0", "-1GiB", "lots", "1e400"])
def test_a_kv_cache_memory_that_means_nothing_is_refused(spec):
    with pytest.raises(ValueError, match="--kv-cache-memory"):
        parse_memory_budget(spec)
