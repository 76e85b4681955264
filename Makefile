# Two commands on a fresh machine: `make demo` (the main job on the embedded default) and
# `make test`. Each creates .venv and installs the project into it when needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Extras installed with the project: dev (pytest, ruff), docs (mkdocs-material) and peers
# (clip_benchmark, pandas for open_clip_train) by default; CI adds ray (`make test EXTRAS=dev,docs,peers,ray`).
EXTRAS ?= dev,docs,peers
# The tested versions (pip freeze of the environment the suite passed in); `CONSTRAINTS=` for the newest.
CONSTRAINTS ?= constraints.txt
STAMP := $(VENV)/.installed-$(EXTRAS)
DEMO_OUT ?= runs/demo
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint docs clean vllm-venv

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing mmw2s and its dependencies into $(VENV) (torch and friends: a few minutes the first time)..."
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq -e ".[$(EXTRAS)]" $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mmw2s run --config configs/demo.yaml out=$(DEMO_OUT)

# `make test`: the linter, then the suite (tests/test_docs.py builds the docs site with --strict).
test: $(STAMP) lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) lint
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

docs: $(STAMP)
	$(PY) -m mmw2s.reference
	$(PY) -m mkdocs build --strict

# vLLM in its own venv (its torch and transformers pins conflict with ours): the endpoint captioner's
# managed server runs under .venv-vllm/bin/python (captioner.endpoint.server_python).
VLLM_VENV ?= .venv-vllm
vllm-venv: $(VLLM_VENV)/.installed-vllm

$(VLLM_VENV)/.installed-vllm: scripts/vllm_venv.sh
	PYTHON=$(PYTHON) bash scripts/vllm_venv.sh $(VLLM_VENV)

clean:
	rm -rf runs .pytest_cache site
