# Quick start: `make repro` (reproduce the tables) and `make test`; both set themselves up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup lint test test-fast smoke repro bench clean-venv

setup: $(STAMP)

# Re-install only when the project's dependencies change (idempotent).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# ruff (lint, import order, format: pyproject's [tool.ruff]) and actionlint on .github/workflows/
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/actionlint

# Everything: what the README runs (.ci/run runs the same as `make smoke` + `make`).
test: setup
	$(BIN)/python -m pytest -q --timeout=900

# The edit-run loop: no dvc repro, Snakemake or SLURM runs (tests marked slow).
test-fast: setup
	$(BIN)/python -m pytest -q --timeout=900 -m "not slow"

# The pipeline smoke run: a tiny-subset `dvc repro` of the whole pipeline, then DVC experiments,
# their comparisons and `rap compare` on it. What .github/workflows/ci.yml runs after test-fast.
SMOKE := tests/test_pipeline.py
smoke: setup
	$(BIN)/python -m pytest -q --timeout=2700 $(SMOKE)

repro: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

bench: setup
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
