# Quick start: `make repro` (reproduce the tables) and `make test`; both set themselves up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast repro bench clean-venv

setup: $(STAMP)

# Re-install only when the project's dependencies change (idempotent).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Everything: what CI and the README run.
test: setup
	$(BIN)/python -m pytest -q --timeout=900

# The edit-run loop: no dvc repro, Snakemake or SLURM runs (tests marked slow).
test-fast: setup
	$(BIN)/python -m pytest -q --timeout=900 -m "not slow"

repro: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

bench: setup
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
