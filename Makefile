# Quick start: `make repro` (reproduce the tables) and `make test`; both set themselves up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup tools lint test test-fast smoke repro bench clean-venv

setup: $(STAMP)

# Re-install only when the project's dependencies change (idempotent).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The field's download tools, each in its own venv (git-ignored .tools/): img2dataset (CC3M)
# cannot share the project's pins but resolves alone (rap/data/img2dataset.py; ~45 s from PyPI).
# `rap download cc3m` makes it too when missing; the stamp keeps a made one.
IMG2DATASET_VERSION := $(shell sed -n 's/^VERSION = "\(.*\)"/\1/p' rap/data/img2dataset.py)
TOOLS_STAMP := .tools/img2dataset/.installed-$(IMG2DATASET_VERSION)
TOOLS_PYTHON ?= python3.11

tools: $(TOOLS_STAMP)

$(TOOLS_STAMP): rap/data/img2dataset.py
	test -x .tools/img2dataset/bin/python || $(TOOLS_PYTHON) -m venv .tools/img2dataset
	.tools/img2dataset/bin/python -m pip install --quiet --disable-pip-version-check img2dataset==$(IMG2DATASET_VERSION)
	touch $(TOOLS_STAMP)

# ruff (lint, import order, format: pyproject's [tool.ruff]), snakefmt on workflow/ (the Snakemake
# catalog's format; `snakemake --lint` runs in tests/test_snakemake.py) and actionlint on .github/workflows/
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check workflow
	$(BIN)/actionlint

# Everything: what CI and the README run (the loopback download test runs img2dataset).
test: setup tools
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
