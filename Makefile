# gptray: two commands do all the set-up.
#   make quickstart   create .venv if missing, then tokenize → train → track → sample on local Ray
#   make test         create .venv if missing, then run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

# Offline machines keep tiktoken's files and small corpora in ../shared beside the checkout.
SHARED := $(abspath ../shared)
ifneq ($(wildcard $(SHARED)/tiktoken),)
export TIKTOKEN_CACHE_DIR ?= $(SHARED)/tiktoken
endif
ifneq ($(wildcard $(SHARED)/corpora),)
export GPTRAY_CORPORA ?= $(SHARED)/corpora
endif

.PHONY: setup quickstart test clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# torch first: where there is no NVIDIA GPU, the CPU build (PyPI's default Linux wheel is the
	@# multi-GB CUDA one). Without internet, pip's configured local wheels are used as they are.
	@if $(BIN)/python -c "import torch" 2>/dev/null; then \
	  echo "torch already installed"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then \
	  $(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"; \
	elif $(BIN)/python -c "import urllib.request as u; u.urlopen('$(TORCH_CPU_INDEX)/', timeout=5)" 2>/dev/null; then \
	  $(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)" --index-url $(TORCH_CPU_INDEX); \
	else \
	  $(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"; \
	fi
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@

quickstart: setup
	$(BIN)/gptray quickstart $(ARGS)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf runs data .pytest_cache
