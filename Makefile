# medgrounder: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.DEFAULT_GOAL := help

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch torchvision
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed ## Create .venv and install the package with its dev tools (CPU-usable torch pinned)

demo: install ## Run the embedded demo: synthetic VinDr-CXR, tiny LiteGPT, [identify] then [vqa], evaluation
	$(PY) -m medgrounder.train $(ARGS)

test: install ## Run the test suite (CPU only)
	$(PY) -m pytest -q $(ARGS)

lint: install ## ruff check
	$(VENV)/bin/ruff check src tests bench

clean: ## Remove run outputs and caches (keeps .venv and data/)
	rm -rf outputs multirun .pytest_cache .ruff_cache

.PHONY: help install demo test lint clean
