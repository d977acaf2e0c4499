#!/usr/bin/env bash
# Runs once inside the new environment; RAP_REPO is set by workflow/Snakefile (its checkout).
set -euo pipefail
pip install --no-input -e "${RAP_REPO:?RAP_REPO unset: create the environment through workflow/Snakefile}"
