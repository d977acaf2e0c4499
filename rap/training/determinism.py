"""The one place a run's randomness and kernel choice are fixed (docs/DESIGN.md, "Reproducibility").

Pre-training and fine-tuning call :func:`seed_everything` before building the model (the same
seed on every rank: identical initial weights) and again with ``seed + rank`` before training
(per-rank streams: dropout, MAC masks, ITM hard negatives). The data order does not depend on
these generators: :class:`rap.data.datasets.TrainLoader` derives it from (seed, epoch, step,
rank) alone.

What this buys, measured by tests/test_reproducible.py: on the CPU, for a given machine kind,
code, params and torch thread count, the checkpoint file and every metric come out
byte-identical run to run. A different thread count changes the reduction order of the CPU
kernels and so the low bits of the weights; on CUDA, deterministic algorithms remove the
run-to-run variation of the kernels PyTorch knows about, but nothing promises equality with the
CPU or across GPU models, drivers or library versions.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from rap import cpu_kernels

__all__ = ["CUBLAS_WORKSPACE", "MODES", "deterministic_mode", "seed_everything"]

# cuBLAS is only deterministic with a fixed workspace per stream (CUDA docs, "Results
# reproducibility"); it reads the variable when its handle is created, so it must be set before
# the first CUDA matmul: seed_everything runs before the model is built.
CUBLAS_WORKSPACE = ":4096:8"


# RAP_DETERMINISTIC: "1" an op without a deterministic kernel raises; "warn" it warns and runs
# anyway (a GPU run that would otherwise stop on such an op); "0" leaves torch's settings alone
# (seeding only). Unset, the scale's `deterministic` setting decides (params.yaml: `error` at
# the embedded scale, `warn` at the paper scale, where a multi-day GPU run must not stop on an
# op PyTorch has no deterministic CUDA kernel for).
MODES = ("1", "warn", "0")
CONFIG_MODES = {"error": "1", "warn": "warn", "none": "0"}  # params.yaml's `deterministic` -> MODES


def deterministic_mode(setting: str = "error") -> str:
    """``RAP_DETERMINISTIC`` when set, else the params setting ``setting`` (error | warn | none)
    as one of ``MODES``; a value outside them is an error naming it."""
    if setting not in CONFIG_MODES:
        raise ValueError(f"deterministic={setting!r}: expected one of {tuple(CONFIG_MODES)}")
    mode = os.environ.get("RAP_DETERMINISTIC", CONFIG_MODES[setting]).strip().lower()
    if mode not in MODES:
        raise ValueError(f"RAP_DETERMINISTIC={mode!r}: expected one of {MODES}")
    return mode


def seed_everything(seed: int, deterministic: str = "error") -> None:
    """Seed python, numpy and torch (every CUDA device too) with ``seed`` and make torch use
    deterministic kernels (:func:`deterministic_mode`): an op without a deterministic
    implementation raises (or warns, in ``warn`` mode) instead of silently varying, and cuDNN
    neither benchmarks nor picks non-deterministic algorithms."""
    mode = deterministic_mode(deterministic)
    cpu_kernels.check_pinned()  # the pinned mode's oneDNN switch, and a check that pinning took
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if mode == "0":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=mode == "warn")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
