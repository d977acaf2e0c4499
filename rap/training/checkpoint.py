"""Step checkpoints of a training run: what they hold, RNG capture/restore, paths, rotation.

Writing and reading checkpoint files (the atomic ``torch.save``, loading weights for
fine-tuning, evaluation and the figure) is :mod:`rap.checkpoint_io`, outside the training
package.

A training checkpoint ``<out>/checkpoints/step-00000050.pt`` holds everything an interrupted
run needs to finish with the *same* weights as an uninterrupted one:

``model``       state dict of the unwrapped model (the temperature and the momentum
                encoders/queues are parameters/buffers, so they come along)
``optimizer``, ``scheduler``, ``scaler``   their state dicts
``rng``         one entry per rank: python, numpy, torch CPU and CUDA generator states
``position``    ``{"epoch", "step_in_epoch", "global_step"}`` (optimiser steps)
``extra``       loop-owned state (best validation score, ...)
``params``      the resolved config, flat (``Params.to_flat_dict``), for provenance

``shaping``      what made the weights: the parameters that shape training and a sha256 per
                source file that does (:mod:`rap.training.resume` decides from them whether
                a rerun may continue this run)
``total_steps``  the run's length, so that a finished run is told from an interrupted one

The final ``<out>/checkpoint.pt`` has ``model``, ``params``, ``stage`` and ``step``;
:func:`rap.checkpoint_io.load_model_weights` reads either kind. Files of an earlier run are
never deleted: a fresh start moves them aside (:func:`rap.training.resume.set_aside`); only
the rotation of one run's own step checkpoints (:func:`prune_checkpoints`) removes files.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "capture_rng_state",
    "restore_rng_state",
    "step_checkpoint_path",
    "latest_checkpoint",
    "prune_checkpoints",
]

log = logging.getLogger(__name__)

_STEP_RE = re.compile(r"^step-(\d+)\.pt$")


def capture_rng_state() -> dict[str, Any]:
    """Every generator training draws from: augmentation (python/numpy/torch in the data
    pipeline), dropout, MAC masks and ITM hard negatives (torch, CUDA)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            log.warning(
                "checkpoint has CUDA RNG states for %d devices, %d visible: CUDA RNG not restored",
                len(cuda_states),
                torch.cuda.device_count(),
            )


def step_checkpoint_path(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step-{step:08d}.pt"


def _step_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    folder = Path(out_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_RE.match(p.name))]
    return sorted(found)


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The step checkpoint with the highest step number in ``<out_dir>/checkpoints``."""
    found = _step_checkpoints(out_dir)
    return found[-1][1] if found else None


def prune_checkpoints(out_dir: Path, keep: int) -> list[Path]:
    """Rotation within one run: delete all but the ``keep`` (>= 1) newest step checkpoints,
    so the run's latest state always stays; returns the deleted paths."""
    if keep < 1:
        raise ValueError(f"prune_checkpoints keeps at least one checkpoint, got keep={keep}")
    found = _step_checkpoints(out_dir)
    doomed = [p for _, p in found[:-keep]]
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed
