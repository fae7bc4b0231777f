# Two entry points for a fresh machine: `make demo` and `make test`.
# The venv gets torch first (the CPU wheel on machines without CUDA) so that the project's
# `torch>=2.4` requirement is already satisfied and pip never pulls CUDA wheels or torchvision.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# The web demo (`loom serve`, extra .[app]) gets its own venv: Gradio pins Pillow < 13, while the golden fixture's
# exact resize checks need Pillow 13's bicubic (it changed up to 22 levels on non-integer upscales).
APP_VENV ?= .venv-app
APP_BIN := $(APP_VENV)/bin

.PHONY: setup app demo test lint bench

# a new venv at $(1) with torch installed first (see above)
define new_venv
	$(PY) -m venv $(1)
	$(1)/bin/pip install -q --upgrade pip
	$(1)/bin/pip install -q torch==$(TORCH_VERSION)
endef

$(BIN)/python:
	$(call new_venv,$(VENV))

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e ".[dev,data,video]"
	touch $@

$(APP_BIN)/python:
	$(call new_venv,$(APP_VENV))

$(APP_VENV)/.installed: $(APP_BIN)/python pyproject.toml
	$(APP_BIN)/pip install -q -e ".[app]"
	touch $@

setup: $(VENV)/.installed

app: $(APP_VENV)/.installed

demo: setup
	$(BIN)/python -m loom.demo

test: setup app
	LOOM_SERVE_PYTHON=$(APP_BIN)/python $(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check loom tests scripts evals

bench: setup
	$(BIN)/python scripts/bench_forward.py
