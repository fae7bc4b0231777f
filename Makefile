# Two entry points for a fresh machine: `make demo` and `make test`.
# The venv gets torch first so that the project's `torch>=2.4` requirement is already satisfied and pip never
# pulls another torch or torchvision afterwards.
#   TORCH_VERSION    the torch release installed first (default 2.13.0)
#   TORCH_INDEX_URL  the package index that one torch install uses, e.g.
#                    make test TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu    (CPU wheel, ~200 MB)
#                    make test TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126  (CUDA 12.6 wheel)
#                    Unset: pip's configured index — on plain PyPI for Linux that is the CUDA build.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
TORCH_INDEX_URL ?=

.PHONY: setup demo test lint bench

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL) )torch==$(TORCH_VERSION)

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
