#!/usr/bin/env bash
# Builds tests/fixtures/release/ from the authors' released RaP code (run by hand, never by CI).
#
# 1. fetches caskcsg/VLP at the pinned commit and takes its RaP/ folder (nothing of it is
#    committed to this repository: it stays in $WORK);
# 2. makes a venv of its own ($WORK/venv) with torch beside the release's old packages,
#    installed --no-deps as the release needs them (tokenizers left out: the slow tokenizer
#    serves; med.py does not import under current transformers);
# 3. runs build_fixture.py there: the release's own model classes at a small configuration
#    with perturbed random weights, its own evaluation function, and writes the fixture.
#
# Usage: tools/release_fixture/build.sh [WORK_DIR]   (default /tmp/rap-release-fixture)
# Environment: RELEASE_SRC=DIR uses an already checked-out RaP/ folder instead of git clone
# (a machine without GitHub access); PYTHON=python3.11 picks the interpreter.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
WORK="${1:-/tmp/rap-release-fixture}"
RELEASE_REPO="https://github.com/caskcsg/VLP.git"
RELEASE_COMMIT="e18b901002f66aa2702883dfd8504ae44df8e02c"
PYTHON="${PYTHON:-python3}"
mkdir -p "$WORK"

if [ -n "${RELEASE_SRC:-}" ]; then
    SRC="$RELEASE_SRC"
else
    if [ ! -d "$WORK/VLP/.git" ]; then
        git clone --no-checkout "$RELEASE_REPO" "$WORK/VLP"
    fi
    git -C "$WORK/VLP" checkout --quiet "$RELEASE_COMMIT"
    SRC="$WORK/VLP/RaP"
fi

if [ ! -x "$WORK/venv/bin/python" ]; then
    "$PYTHON" -m venv "$WORK/venv"
    "$WORK/venv/bin/pip" install torch==2.14.1 torchvision==0.29.1
    "$WORK/venv/bin/pip" install --no-deps transformers==4.15.0 timm==0.4.12 fairscale==0.4.4
    "$WORK/venv/bin/pip" install "huggingface-hub<0.11" regex requests sacremoses tqdm pyyaml packaging filelock numpy
fi

"$WORK/venv/bin/python" "$HERE/build_fixture.py" --release-src "$SRC" --release-commit "$RELEASE_COMMIT" \
    --out "$REPO/tests/fixtures/release"
