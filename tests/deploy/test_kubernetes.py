"""deploy/kubernetes, rendered by a real `kubectl kustomize` and checked object by object:
`kubernetes-validate --strict` against the Kubernetes API schemas, and the InferencePool (a custom
resource, which kubernetes-validate does not know) against the schema of its CRD
(tests/deploy/crds). Neither checks the CRD's CEL rules (x-kubernetes-validations); the tests
below check what ties the objects together.
"""
from __future__ import annotations

import copy
import os
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jsonschema
import pytest
import yaml

from .conftest import ENVOY_YAML, ROOT, load_envoy_config

KUSTOMIZE_DIR = ROOT / "deploy" / "kubernetes"
# The last one is the base with the optional autoscaling component, as an overlay would add it.
KUSTOMIZATIONS = ("base", "overlays/gpu", "overlays/inference-extension", "base+components/autoscaling")
CRDS = pathlib.Path(__file__).parent / "crds"
NAMESPACE = "tokenwire"


def _tool(name: str) -> str:
    """A binary the test extras install next to this interpreter (else one on PATH)."""
    beside = pathlib.Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"no {name}: install the test extras"
    return found


@dataclass(frozen=True)
class Rendered:
    path: pathlib.Path  # the rendered YAML, one document per object
    objects: list[dict[str, Any]]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        [found] = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"].startswith(name)]
        return found

    def names(self, kind: str) -> set[str]:
        return {o["metadata"]["name"] for o in self.objects if o["kind"] == kind}


def render(kustomization: str, directory: pathlib.Path) -> Rendered:
    """`kubectl kustomize` of deploy/kubernetes/KUSTOMIZATION, or of BASE+COMPONENT."""
    name = kustomization.replace("/", "-").replace("+", "-")
    path = KUSTOMIZE_DIR / kustomization
    if "+" in kustomization:
        base, component = kustomization.split("+")
        path = directory / name
        path.mkdir()
        relative = [os.path.relpath(KUSTOMIZE_DIR / part, path) for part in (base, component)]
        (path / "kustomization.yaml").write_text(f"resources: [{relative[0]}]\ncomponents: [{relative[1]}]\n")
    result = subprocess.run([_tool("kubectl"), "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = directory / f"{name}.yaml"
    out.write_text(result.stdout)
    return Rendered(out, [o for o in yaml.safe_load_all(result.stdout) if o])


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    directory = tmp_path_factory.mktemp("kubernetes")
    return {kustomization: render(kustomization, directory) for kustomization in KUSTOMIZATIONS}


def kubernetes_validate(path: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("kubernetes-validate"), "--strict", str(path)], capture_output=True, text=True, timeout=120
    )


def _strict(schema: Any) -> Any:
    """The schema with unknown fields refused wherever it lists the known ones, as --strict does
    (the API server would drop them silently)."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if schema.get("type") == "object" and "properties" in schema:
            schema.setdefault("additionalProperties", False)
    elif isinstance(schema, list):
        schema = [_strict(item) for item in schema]
    return schema


def crd_validator(kind: str) -> jsonschema.Draft202012Validator:
    for crd_file in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(crd_file.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            [version] = [v for v in crd["spec"]["versions"] if v["served"]]
            return jsonschema.Draft202012Validator(_strict(version["schema"]["openAPIV3Schema"]))
    raise AssertionError(f"no CRD for {kind} in {CRDS}")


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_object_is_valid(renders: dict[str, Rendered], kustomization: str) -> None:
    rendered = renders[kustomization]
    result = kubernetes_validate(rendered.path)
    assert result.returncode == 0, result.stdout + result.stderr
    custom = [o for o in rendered.objects if o["kind"] == "InferencePool"]
    # Every object passed, except the custom resources: only their kind is unknown to it.
    assert result.stdout.count(" passed for resource ") == len(rendered.objects) - len(custom)
    unknown = [line for line in (result.stdout + result.stderr).splitlines() if "Couldn't find schema" in line]
    assert len(unknown) == len(custom) and all("InferencePool" in line for line in unknown)
    for pool in custom:
        crd_validator("InferencePool").validate(pool)


def test_the_checks_can_fail(renders: dict[str, Rendered], tmp_path: pathlib.Path) -> None:
    rendered = renders["overlays/inference-extension"]
    broken = copy.deepcopy(rendered.objects)
    deployment = next(o for o in broken if o["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {"port": 1}
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump_all(broken))
    result = kubernetes_validate(tmp_path / "broken.yaml")
    assert result.returncode != 0 and "grpcc" in result.stdout + result.stderr
    pool = copy.deepcopy(rendered.get("InferencePool", "tokenwire"))
    pool["spec"]["targetPorts"] = [{"port": 8000}]
    with pytest.raises(jsonschema.ValidationError):
        crd_validator("InferencePool").validate(pool)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_everything_lives_in_one_namespace_with_pinned_images(renders: dict[str, Rendered], kustomization: str) -> None:
    for o in renders[kustomization].objects:
        if o["kind"] != "Namespace":
            assert o["metadata"].get("namespace") == NAMESPACE, o["metadata"]["name"]
        for container in _containers(o):
            assert ":" in container["image"], f"{container['name']}: an untagged image"


def _containers(o: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if o["kind"] == "Deployment":
        spec = o["spec"]["template"]["spec"]
        yield from spec.get("initContainers", [])
        yield from spec["containers"]


def _container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [c for c in _containers(deployment) if c["name"] == name]
    return found


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_workers_probe_grpc_health_and_have_time_to_drain(renders: dict[str, Rendered]) -> None:
    deployment = renders["base"].get("Deployment", "tokenwire-worker")
    pod = deployment["spec"]["template"]["spec"]
    worker = _container(deployment, "worker")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert worker[probe]["grpc"] == {"port": 50051}  # grpc.health.v1, service ""
    env = _env(worker)
    drain_s = worker["lifecycle"]["preStop"]["sleep"]["seconds"] + float(env["TOKENWIRE_SHUTDOWN_GRACE"])
    assert pod["terminationGracePeriodSeconds"] > drain_s
    [mount] = worker["volumeMounts"]
    assert mount["mountPath"] == env["TOKENWIRE_CACHE_DIR"]
    assert any(volume["name"] == mount["name"] for volume in pod["volumes"])
    assert {"cpu", "memory"} <= set(worker["resources"]["requests"])
    assert env["TOKENWIRE_METRICS_PORT"] == "9400"


def test_envoy_balances_over_the_headless_service_with_the_composed_config(renders: dict[str, Rendered]) -> None:
    rendered = renders["base"]
    service = rendered.get("Service", "tokenwire-worker")
    assert service["spec"]["clusterIP"] == "None"
    config_map = rendered.get("ConfigMap", "tokenwire-envoy")
    assert config_map["data"]["envoy.yaml"] == ENVOY_YAML.read_text()  # the very file compose runs
    cluster = load_envoy_config()["static_resources"]["clusters"][0]
    assert cluster["type"] == "STRICT_DNS" and "health_checks" in cluster
    [endpoint] = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    assert address["address"] == service["metadata"]["name"]
    assert address["port_value"] in {port["port"] for port in service["spec"]["ports"]}
    envoy = rendered.get("Deployment", "tokenwire-envoy")
    pod = envoy["spec"]["template"]["spec"]
    [volume] = pod["volumes"]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    container = _container(envoy, "envoy")
    [mount] = container["volumeMounts"]
    assert container["args"] == ["-c", f"{mount['mountPath']}/envoy.yaml"]


def test_the_bridge_calls_the_workers_through_envoy(renders: dict[str, Rendered]) -> None:
    rendered = renders["base"]
    envoy = rendered.get("Service", "tokenwire-envoy")
    bridge = _container(rendered.get("Deployment", "tokenwire-bridge"), "bridge")
    assert _env(bridge)["TOKENWIRE_WORKER_ADDRESS"] == f"tokenwire-envoy:{envoy['spec']['ports'][0]['port']}"
    assert rendered.get("Service", "tokenwire-bridge")["spec"]["ports"][0]["port"] == 8000


def test_the_gpu_overlay_gives_each_worker_a_gpu(renders: dict[str, Rendered]) -> None:
    worker = _container(renders["overlays/gpu"].get("Deployment", "tokenwire-worker"), "worker")
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert _env(worker)["TOKENWIRE_DEVICE"] == "cuda"
    cpu_worker = _container(renders["base"].get("Deployment", "tokenwire-worker"), "worker")
    assert "nvidia.com/gpu" not in cpu_worker["resources"].get("limits", {})


def test_the_inference_pool_sends_requests_to_each_workers_bridge(renders: dict[str, Rendered]) -> None:
    rendered = renders["overlays/inference-extension"]
    pool = rendered.get("InferencePool", "tokenwire")["spec"]
    workers = rendered.get("Deployment", "tokenwire-worker")
    assert pool["selector"]["matchLabels"].items() <= workers["spec"]["template"]["metadata"]["labels"].items()
    bridge = _container(workers, "bridge")
    assert [p["number"] for p in pool["targetPorts"]] == [p["containerPort"] for p in bridge["ports"]]
    assert bridge["args"][-2:] == ["--worker-address", "127.0.0.1:50051"]
    assert "tokenwire-bridge" not in rendered.names("Deployment")  # the sidecars replace it
    picker = rendered.get("Service", pool["endpointPickerRef"]["name"])
    assert pool["endpointPickerRef"]["port"]["number"] in {port["port"] for port in picker["spec"]["ports"]}
    epp = _container(rendered.get("Deployment", "tokenwire-epp"), "epp")
    metrics_port = next(p["containerPort"] for p in _container(workers, "worker")["ports"] if p["name"] == "metrics")
    assert f"--pool-name={rendered.get('InferencePool', 'tokenwire')['metadata']['name']}" in epp["args"]
    assert f"--model-server-metrics-port={metrics_port}" in epp["args"]


def test_the_autoscaler_scales_the_workers_on_their_queue(renders: dict[str, Rendered]) -> None:
    rendered = renders["base+components/autoscaling"]
    hpa = rendered.get("HorizontalPodAutoscaler", "tokenwire-worker")["spec"]
    assert hpa["scaleTargetRef"]["name"] in rendered.names("Deployment")
    [metric] = hpa["metrics"]
    assert metric["pods"]["metric"]["name"] == _picker_metrics(renders["overlays/inference-extension"])["queuedRequestsSpec"]


def _picker_metrics(rendered: Rendered) -> dict[str, str]:
    config = yaml.safe_load(rendered.get("ConfigMap", "tokenwire-epp")["data"]["epp-config.yaml"])
    [extractor] = [p for p in config["plugins"] if p["type"] == "core-metrics-extractor"]
    [engine] = extractor["parameters"]["engineConfigs"]
    assert extractor["parameters"]["defaultEngine"] == engine["name"]
    return {key: spec for key, spec in engine.items() if key.endswith("Spec") and spec}


def test_the_picker_reads_metrics_the_worker_exports(renders: dict[str, Rendered], generation_model) -> None:
    from service.metrics import EngineLoadCollector
    from service.models.registry import ModelRegistry

    registry = ModelRegistry()
    registry.add(generation_model)
    exported = {family.name: family for family in EngineLoadCollector(registry).collect()}
    wanted = _picker_metrics(renders["overlays/inference-extension"])
    assert set(wanted) == {"queuedRequestsSpec", "runningRequestsSpec", "kvUsageSpec"}
    for spec in wanted.values():
        assert spec in exported and exported[spec].type == "gauge", spec
