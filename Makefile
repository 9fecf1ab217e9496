# gptray: two commands do all the set-up.
#   make quickstart   create .venv if missing, then tokenize → train → track → sample on local Ray
#   make test         create .venv if missing, then lint (ruff) and run the test suite
#   make test-unit    the fast loop while working: lint and the unit tests (no Ray; about a minute and a half)
#   make test-multinode  the elastic tests on a local multi-node Ray cluster (about 5 minutes; not in make test)
#   make docs         build the docs site into site/ (mkdocs --strict); `make docs-reference` rewrites
#                     docs/reference/ from the code (config keys, commands), which a unit test keeps current
#   make lock         recompile the hashed locks of the users' install (requirements/lock-py311-linux*.txt) with uv,
#                     keeping their pins; `make lock LOCK_ARGS=--upgrade` moves every pin to the newest allowed
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# Offline machines keep tiktoken's files and small corpora in ../shared beside the checkout.
SHARED := $(abspath ../shared)
ifneq ($(wildcard $(SHARED)/tiktoken),)
export TIKTOKEN_CACHE_DIR ?= $(SHARED)/tiktoken
endif
ifneq ($(wildcard $(SHARED)/corpora),)
export GPTRAY_CORPORA ?= $(SHARED)/corpora
endif

.PHONY: setup quickstart lint test test-unit test-multinode docs docs-reference lock clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	scripts/install.sh $(BIN)/python dev
	@touch $@

quickstart: setup
	$(BIN)/gptray quickstart $(ARGS)

lint: setup
	$(BIN)/ruff check .

# The suite runs as three pytest processes, each with its own local Ray: in one process, a driver that
# had launched ~30 Ray Train runs stopped receiving the GCS's actor notifications (Ray 2.60: the next run's
# controller was alive, its `run` call never dispatched), and every later run hung (ARCHITECTURE.md, "Tests").
INTEGRATION_A := $(wildcard tests/integration/test_[a-o]*.py)
INTEGRATION_B := $(wildcard tests/integration/test_[p-s]*.py)
INTEGRATION_C := $(filter-out $(INTEGRATION_A) $(INTEGRATION_B),$(wildcard tests/integration/test_*.py))
test: lint
	$(BIN)/python -m pytest tests/unit $(INTEGRATION_A) $(PYTEST_ARGS)
	$(BIN)/python -m pytest $(INTEGRATION_B) $(PYTEST_ARGS)
	$(BIN)/python -m pytest $(INTEGRATION_C) $(PYTEST_ARGS)

test-unit: lint
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-multinode: setup
	$(BIN)/python -m pytest -m multinode tests/integration $(PYTEST_ARGS)

docs-reference: setup
	$(BIN)/python scripts/reference_pages.py

lock:
	scripts/lock.sh $(LOCK_ARGS)

docs: setup
	$(BIN)/mkdocs build --strict

clean:
	rm -rf runs data site .pytest_cache
