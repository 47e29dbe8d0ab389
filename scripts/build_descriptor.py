"""Writes the proto descriptor set that Envoy's grpc_json_transcoder filter reads.

`--include_imports` makes the set self-contained (google/api/http.proto and the rest travel with
it) and `--include_source_info` keeps the comments. Used by deploy/Dockerfile.envoy and by
tests/deploy; the include paths and the file list are those of gen_proto.py.

The google.rpc detail messages (ErrorInfo, BadRequest, RetryInfo) are added although no
tokenwire proto imports them: the worker packs them into grpc-status-details-bin, and with
`convert_grpc_status` Envoy can only print an error body whose detail types it knows.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from gen_proto import run_protoc  # noqa: E402

STATUS_DETAIL_PROTOS = ("google/rpc/status.proto", "google/rpc/error_details.proto")


def build_descriptor(out: pathlib.Path) -> pathlib.Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    run_protoc(["--include_imports", "--include_source_info", f"--descriptor_set_out={out}"], STATUS_DETAIL_PROTOS)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=pathlib.Path, required=True, help="descriptor set to write")
    build_descriptor(parser.parse_args().out)
