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

test: install ## Run the test suite (CPU only; installs WordNet for METEOR where it can)
	-@$(MAKE) --no-print-directory wordnet
	$(PY) -m pytest -q $(ARGS)

wordnet: ## WordNet 3.0 for METEOR (nltk backend, LiteGPT's numbers): Debian's wordnet-base (root)
	@if [ -f /usr/share/wordnet/data.noun ]; then echo "WordNet 3.0: /usr/share/wordnet"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get install -y -qq --no-install-recommends wordnet-base || { apt-get update -qq && apt-get install -y -qq --no-install-recommends wordnet-base; }; \
	else echo "run as root: apt-get install wordnet-base (or nltk.download('wordnet'), or set MEDGROUNDER_WORDNET)"; exit 1; fi

lint: install ## ruff check
	$(VENV)/bin/ruff check src tests bench experiments

clean: ## Remove run outputs and caches (keeps .venv and data/)
	rm -rf outputs multirun .pytest_cache .ruff_cache

.PHONY: help install demo test lint clean wordnet
