# Two commands set up a fresh machine: `make repro` (pipeline) and `make test` (test suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install repro test lint format sweep report clean

install: $(STAMP)

# Torch first, so `torch>=2.4` below installs nothing more. Without a visible NVIDIA GPU it asks
# for torch==2.13.0: a CPU build where one lies on the machine (as on this project's CPU
# machines); from PyPI on Linux x86_64 that is the CUDA build (several GB) - install a CPU build
# first from https://download.pytorch.org/whl/cpu to avoid it. With a GPU, pip picks a CUDA
# build; a torch already in the venv is kept.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || { \
	  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; \
	  then $(BIN)/pip install -q "torch>=2.4"; else $(BIN)/pip install -q "torch==2.13.0"; fi; }
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

repro: $(STAMP)
	dvc repro

test: $(STAMP)
	python -m pytest -q

lint: $(STAMP)
	ruff check .
	ruff format --check .

format: $(STAMP)
	ruff check --fix .
	ruff format .

sweep: $(STAMP)
	python -m stages.sweep

report: $(STAMP)
	python -m stages.report

clean:
	rm -rf data plots metrics.json mlflow.db mlartifacts
