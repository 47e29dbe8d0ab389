"""Generates the Python protobuf and gRPC stubs of proto/ into tokenwire/v1/ (checked in).

Run `make proto` after editing a .proto file; tests/unit/test_proto_stubs.py fails while the
checked-in stubs differ from what this script produces.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"


def proto_files() -> list[pathlib.Path]:
    return sorted((PROTO_ROOT / "tokenwire" / "v1").glob("*.proto"))


def include_dirs() -> list[str]:
    """Our protos, protoc's well-known types and googleapis-common-protos (google/api/*.proto)."""
    import google.api  # googleapis-common-protos ships its .proto files next to the modules

    googleapis_root = pathlib.Path(google.api.__path__[0]).parent.parent
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    return [str(PROTO_ROOT), str(well_known), str(googleapis_root)]


def run_protoc(options: list[str], extra_protos: tuple[str, ...] = ()) -> None:
    """protoc with `options` on our protos (and `extra_protos`, found on the include paths)."""
    args = ["protoc", *(f"-I{d}" for d in include_dirs()), *options]
    args += [*(str(p.relative_to(PROTO_ROOT)) for p in proto_files()), *extra_protos]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")


def generate(out_dir: pathlib.Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    run_protoc([f"--python_out={out_dir}", f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}"])
    for package_dir in (out_dir / "tokenwire", out_dir / "tokenwire" / "v1"):
        (package_dir / "__init__.py").touch()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT, help="output root (default: repo)")
    generate(parser.parse_args().out)


if __name__ == "__main__":
    main()
