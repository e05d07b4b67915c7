# Two entry points, both self-installing into ./.venv with nothing but python3 and make:
#   make demo   - the main job: the CPU demo on built-in data (train, sample, analyse, RL)
#   make test   - the test suite (what CI runs)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_ARGS ?=

# Code benchmarks run model-written programs under bubblewrap (docs/safety.md). As root with
# apt, install it when missing; quietly, and never failing the install.
.PHONY: sandbox-tools
sandbox-tools:
	@command -v bwrap >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 \
	  || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null 2>&1 \
	  || { apt-get update -qq >/dev/null 2>&1 \
	       && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null 2>&1; } \
	  || true
	@command -v bwrap >/dev/null 2>&1 || echo "note: bubblewrap (bwrap) is not installed;" \
	  "code benchmarks will refuse to run (see docs/safety.md)"

$(BIN)/.installed-base: pyproject.toml | sandbox-tools
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(BIN)/.installed-test: $(BIN)/.installed-base
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

.PHONY: install demo test lint
install: $(BIN)/.installed-base

demo: $(BIN)/.installed-base
	$(BIN)/dllm-jax demo --out out/demo $(DEMO_ARGS)

test: $(BIN)/.installed-test
	$(BIN)/python -m pytest -q

lint: $(BIN)/.installed-test
	$(BIN)/python -m pip install --quiet ruff && $(BIN)/ruff check dllm_jax tests scripts
