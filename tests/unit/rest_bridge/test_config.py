from __future__ import annotations

import argparse

import pytest

from rest_bridge.config import BridgeSettings, add_bridge_arguments


def parse(argv: list[str], standalone: bool = True) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_bridge_arguments(parser, standalone=standalone)
    return parser.parse_args(argv)


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HOST", "PORT"):
        monkeypatch.delenv(f"TOKENWIRE_HTTP_{name}", raising=False)
    monkeypatch.delenv("TOKENWIRE_WORKER_ADDRESS", raising=False)
    monkeypatch.delenv("TOKENWIRE_REQUEST_TIMEOUT", raising=False)
    monkeypatch.delenv("TOKENWIRE_API_KEYS", raising=False)
    monkeypatch.delenv("TOKENWIRE_WORKER_API_KEY", raising=False)
    settings = BridgeSettings.from_args(parse([]))
    assert settings == BridgeSettings("127.0.0.1", 8000, "127.0.0.1:50051", 600.0)


def test_environment_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENWIRE_HTTP_PORT", "9001")
    monkeypatch.setenv("TOKENWIRE_WORKER_ADDRESS", "worker:6000")
    settings = BridgeSettings.from_args(parse(["--http-host", "0.0.0.0", "--request-timeout", "0"]))
    assert settings.http_port == 9001
    assert settings.http_host == "0.0.0.0"
    assert settings.worker_address == "worker:6000"
    assert settings.request_timeout is None


@pytest.mark.parametrize(
    ("grpc_host", "address"),
    [("0.0.0.0", "127.0.0.1:7000"), ("::", "127.0.0.1:7000"), ("::1", "[::1]:7000"), ("worker", "worker:7000")],
)
def test_serve_derives_the_worker_address(grpc_host: str, address: str) -> None:
    args = parse([], standalone=False)
    assert not hasattr(args, "worker_address")
    args.grpc_host, args.grpc_port, args.api_keys, args.otlp_endpoint = grpc_host, 7000, [], None
    assert BridgeSettings.from_args(args).worker_address == address


def test_api_keys_from_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENWIRE_API_KEYS", "env-1, env-2,")
    monkeypatch.setenv("TOKENWIRE_WORKER_API_KEY", "to-worker")
    settings = BridgeSettings.from_args(parse(["--api-key", "flag-1"]))
    assert settings.api_keys == ("env-1", "env-2", "flag-1")
    assert settings.worker_api_key == "to-worker"


def test_serve_sends_its_first_key_to_its_worker() -> None:
    args = parse([], standalone=False)
    assert not hasattr(args, "api_keys") and not hasattr(args, "worker_api_key")
    args.grpc_host, args.grpc_port, args.api_keys, args.otlp_endpoint = "127.0.0.1", 7000, ["k1", "k2"], None
    settings = BridgeSettings.from_args(args)
    assert (settings.api_keys, settings.worker_api_key) == (("k1", "k2"), "k1")


def test_flags_do_not_clash_with_the_worker() -> None:
    parser = argparse.ArgumentParser()
    add_bridge_arguments(parser)
    worker_flags = ("--grpc-host", "--grpc-port", "--model", "--embedding-model", "--device", "--dtype", "--cache-dir")
    for flag in worker_flags:
        parser.add_argument(flag)  # argparse raises on a clash
