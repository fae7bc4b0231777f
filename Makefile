# Two entry points for a fresh machine: `make demo` and `make test`.
# The venv gets torch first (the CPU wheel on machines without CUDA) so that the project's
# `torch>=2.4` requirement is already satisfied and pip never pulls CUDA wheels or torchvision.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: setup demo test lint bench

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==$(TORCH_VERSION)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e ".[dev,data]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/python -m loom.demo

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check loom tests scripts evals

bench: setup
	$(BIN)/python scripts/bench_forward.py
