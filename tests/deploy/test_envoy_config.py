"""deploy/envoy/envoy.yaml: the real Envoy accepts it, and it covers every service of the proto."""
from __future__ import annotations

import pathlib
import subprocess

from google.protobuf import descriptor_pb2

from .conftest import ROOT, envoy_binary, load_envoy_config, transcoder, write_envoy_config


def validate(config: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "--disable-hot-restart", "-c", str(config)],
        capture_output=True, text=True, timeout=60,
    )


def test_envoy_validates_the_config(descriptor: pathlib.Path, tmp_path: pathlib.Path) -> None:
    result = validate(write_envoy_config(tmp_path / "envoy.yaml", descriptor))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout


def test_envoy_rejects_a_service_missing_from_the_descriptor(
    descriptor: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    # Proves the check above can fail: the transcoder really loads the descriptor set.
    config = write_envoy_config(tmp_path / "envoy.yaml", descriptor)
    config.write_text(config.read_text().replace("tokenwire.v1.Models", "tokenwire.v1.Nope"))
    result = validate(config)
    assert result.returncode != 0
    assert "tokenwire.v1.Nope" in result.stderr


def test_transcoder_lists_every_service_of_the_descriptor(descriptor: pathlib.Path) -> None:
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor.read_bytes()).file
    services = {f"{f.package}.{s.name}" for f in files if f.package == "tokenwire.v1" for s in f.service}
    assert services == set(transcoder(load_envoy_config())["services"])


def test_descriptor_keeps_imports_and_source_info(descriptor: pathlib.Path) -> None:
    files = {f.name: f for f in descriptor_pb2.FileDescriptorSet.FromString(descriptor.read_bytes()).file}
    assert "google/api/http.proto" in files  # --include_imports
    assert "google/rpc/error_details.proto" in files  # error details print as JSON
    assert files["tokenwire/v1/models.proto"].source_code_info.location  # --include_source_info


def test_envoy_image_puts_the_descriptor_where_the_config_reads_it() -> None:
    path = transcoder(load_envoy_config())["proto_descriptor"]
    assert f"/out/tokenwire.pb {path}" in (ROOT / "deploy" / "Dockerfile.envoy").read_text()


def test_workers_cluster_is_health_checked_http2_with_safe_retries() -> None:
    config = load_envoy_config()
    cluster = config["static_resources"]["clusters"][0]
    assert cluster["type"] == "STRICT_DNS"
    options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in options["explicit_http_config"]
    check = cluster["health_checks"][0]
    assert "grpc_health_check" in check and check["no_traffic_interval"] == "2s"
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    assert route["timeout"] == "0s"
    assert set(route["retry_policy"]["retry_on"].split(",")) == {
        "connect-failure", "refused-stream", "reset", "unavailable"
    }
    assert hcm["http_filters"][-1]["name"] == "envoy.filters.http.router"
