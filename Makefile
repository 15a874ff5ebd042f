# Fine-Tuning & Distillation Workbook. Two commands do all the set-up: `make lab` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# torch's pin is read from requirements/server.txt (versions live in requirements/*.txt) and installed first,
# so nothing that depends on torch can pull a CUDA build.
TORCH_PIN := $(shell grep -E '^torch==' requirements/server.txt)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup vllm browser lab lint test test-fast test-browser notebooks reports bench bench-data clean-venv

$(STAMP): requirements.txt requirements/*.txt requirements-nodeps.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required (found " + sys.version.split()[0] + "): set PYTHON=/path/to/python3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet setuptools==80.9.0
	$(PIP) install --quiet $(TORCH_PIN)
	$(PIP) install --quiet -r requirements.txt
	$(PIP) install --quiet --no-deps -r requirements-nodeps.txt
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	$(PY) scripts/install_llama_cpp.py
	$(VENV)/bin/workbook doctor
	@touch $(STAMP)

## setup: create .venv and install everything (idempotent; instant when nothing changed)
setup: $(STAMP)

## vllm: vLLM's own environment (once per machine, in the user's cache), for `workbook serve --engine vllm` and its tests
vllm: setup
	$(PY) scripts/install_vllm.py

## browser: Debian's Chromium for the browser test (installed with apt-get when missing; needs root or sudo)
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "The browser test needs Chromium at $(CHROMIUM): install Debian's 'chromium' package (or set CHROMIUM=/path)."; exit 1; fi; }

## lab: set up, then open JupyterLab on notebooks/
lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

## lint: ruff, the one-way import rule between the wings (import-linter, docs/architecture.md), mypy on the data tools and the server
lint: setup
	$(VENV)/bin/ruff check src tests scripts benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy src/helpers/data src/helpers/server

## test-fast: the fast tier (tests/fast: the server's routes with a fake engine, request models, the fair queue, settings), no model; seconds
test-fast: setup
	$(PY) -m pytest tests/fast -q

## test: set up, lint, then run the whole test suite (browser and vLLM tests included), offline
test: setup vllm browser lint
	WORKBOOK_CHROMIUM=$(CHROMIUM) $(PY) -m pytest

## test-browser: only the real-browser test (JupyterLab + Playwright + Chromium); screenshots in test-artifacts/browser/
test-browser: setup browser
	WORKBOOK_CHROMIUM=$(CHROMIUM) $(PY) -m pytest -m browser

## notebooks: write notebooks/*.ipynb from their text sources (notebooks/*.py) and run each at its defaults
notebooks: setup
	$(PY) scripts/build_notebooks.py --execute

## reports: execute every notebook (course-sized parameters) into reports/*.html
reports: setup
	$(VENV)/bin/workbook report --all

## bench: every benchmark (data, training, inference, llama.cpp against the server, many tuned models served in-process and by vLLM, the server's memory over `make reports`), each printing its ratios
bench: bench-data vllm
	$(PY) benchmarks/bench_model.py all

## bench-data: validate + count tokens of a generated 1,000,000-example file
bench-data: setup
	$(PY) benchmarks/bench_data.py

clean-venv:
	rm -rf $(VENV)
