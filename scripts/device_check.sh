#!/usr/bin/env bash
# On the device machine (one H100/H200; torch with CUDA in its python3; no network), from the
# repository's root, after scripts/device_prep.sh filled .device/ here: installs the carried wheels,
# runs `pytest -m gpu`, then the GPU shapes bench (the Llama-3.1-8B shape, bf16, 1,024-token
# prompts, 128 output tokens, 1 and 64 clients, both APIs, transformers generate beside it).
# Everything lands in $OUT: env.txt, install.log, pytest-gpu.log, bench.log, BENCHMARKS.md (this
# tree's, with the run's section in it) and results/ (the raw JSON and the server's log).
# Bounded to under 8 minutes: each step has its own time limit, and the bench's loads theirs.
set -uo pipefail
OUT=${OUT:-$PWD/device-out}
KIT=.device
mkdir -p "$OUT"
started=$(date +%s)
step() { echo "== $(( $(date +%s) - started )) s: $*"; }

step "installing $(ls "$KIT"/wheels/*.whl | wc -l) carried wheels"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$KIT"/wheels/*.whl >"$OUT/install.log" 2>&1 || { tail -20 "$OUT/install.log"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENWIRE_CACHE_DIR=/tmp/tokenwire-cache
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c 'import sys, torch, transformers, triton; print(sys.version.split()[0], "torch", torch.__version__,
        "transformers", transformers.__version__, "triton", triton.__version__, torch.cuda.get_device_name())'
    echo "commit: $(cat "$KIT/COMMIT")"
} 2>&1 | tee "$OUT/env.txt"

# The service tests' conftest builds tokenwire's C++ CPU kernels on import (about a minute there).
step "pytest -m gpu"
mapfile -t gpu_tests < <(grep -rlE 'mark\.gpu' tests --include='test_*.py')
timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu "${gpu_tests[@]}" 2>&1 | tee "$OUT/pytest-gpu.log"
tests=${PIPESTATUS[0]}

step "bench: python -m bench.shapes"
cp BENCHMARKS.md "$OUT/BENCHMARKS.md"
timeout 300 python3 -m bench.shapes --model "meta-llama/Llama-3.1-8B-Instruct=$KIT/llama-3.1-8b-instruct" \
    --device cuda --dtype bfloat16 --prompt-tokens 1024 --max-tokens 128 --clients 1,64 --requests-per-client 2 \
    --load-timeout 40 --commit "$(cat "$KIT/COMMIT")" --output "$OUT/BENCHMARKS.md" --results-dir "$OUT/results" \
    2>&1 | tee "$OUT/bench.log"
bench=${PIPESTATUS[0]}

step "done: pytest exit $tests, bench exit $bench"
[ "$tests" = 0 ] && [ "$bench" = 0 ]
