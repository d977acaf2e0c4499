"""Step checkpoints of a training run: what they hold, RNG capture/restore, paths, rotation.

Writing and reading checkpoint files (the atomic ``torch.save``, loading weights for
fine-tuning, evaluation and the figure) is :mod:`rap.checkpoint_io`, outside the training
package.

A training checkpoint ``<out>/checkpoints/step-00000050.pt`` holds everything an interrupted
run needs to finish with the *same* weights as an uninterrupted one:

``model``       state dict of the unwrapped model (the temperature and the momentum
                encoders/queues are parameters/buffers, so they come along)
``optimizer``, ``scheduler``, ``scaler``   their state dicts
``rng``         one entry per rank: python, numpy, torch CPU and CUDA generator states, in
                types ``torch.load(weights_only=True)`` reads (numpy's key array as an int64
                tensor)
``position``    ``{"epoch", "step_in_epoch", "global_step"}`` (optimiser steps)
``extra``       loop-owned state (best validation score, ...)
``params``      the resolved config, flat (``Params.to_flat_dict``), for provenance

``shaping``      what made the weights: the parameters that shape training and a sha256 per
                source file that does (:mod:`rap.training.resume` decides from them whether
                a rerun may continue this run)
``total_steps``  the run's length, so that a finished run is told from an interrupted one

Beside each step checkpoint, ``step-*.pt.sha256`` (``sha256sum`` format) records the file's
digest when it was written: a resume checks it (:func:`verify_step_checkpoint`), so a file cut
short or altered since is found before it is used.

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

from rap.atomic import write_text_atomic
from rap.checkpoint_io import DamagedCheckpoint, atomic_save, file_digest

__all__ = [
    "capture_rng_state",
    "restore_rng_state",
    "step_checkpoint_path",
    "digest_path",
    "save_step_checkpoint",
    "verify_step_checkpoint",
    "step_checkpoints",
    "latest_checkpoint",
    "prune_checkpoints",
]

log = logging.getLogger(__name__)

_STEP_RE = re.compile(r"^step-(\d+)\.pt$")


def capture_rng_state() -> dict[str, Any]:
    """Every generator training draws from: augmentation (python/numpy/torch in the data
    pipeline), dropout, MAC masks and ITM hard negatives (torch, CUDA)."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),  # (version, tuple of ints, None): plain data
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),  # uint32 values, exactly
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    np.random.set_state(numpy_state)  # (a tuple holding an array: checkpoints of earlier rap versions)
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


def digest_path(checkpoint: Path) -> Path:
    """``step-00000004.pt`` -> ``step-00000004.pt.sha256``."""
    return checkpoint.with_name(checkpoint.name + ".sha256")


def save_step_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Write ``state`` atomically, then its digest beside it (``sha256sum -c`` reads it)."""
    atomic_save(state, path)
    write_text_atomic(digest_path(path), f"{file_digest(path)}  {path.name}\n")
    return path


def verify_step_checkpoint(path: Path) -> None:
    """Raise :class:`DamagedCheckpoint` when ``path`` no longer has the digest recorded when it
    was written (no record: written by an earlier rap, or killed between the two writes; then
    only loading it tells)."""
    record = digest_path(path)
    if not record.is_file():
        return
    expected = (record.read_text().split() or [""])[0]
    actual = file_digest(path)
    if actual != expected:
        raise DamagedCheckpoint(
            f"{path} does not match the sha256 recorded when it was written ({record.name}: "
            f"{expected[:12]}..., file now: {actual[:12]}..., {path.stat().st_size} bytes)"
        )


def step_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every step checkpoint in ``<out_dir>/checkpoints``, oldest first."""
    folder = Path(out_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_RE.match(p.name))]
    return sorted(found)


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The step checkpoint with the highest step number in ``<out_dir>/checkpoints``."""
    found = step_checkpoints(out_dir)
    return found[-1][1] if found else None


def prune_checkpoints(out_dir: Path, keep: int) -> list[Path]:
    """Rotation within one run: delete all but the ``keep`` (>= 1) newest step checkpoints,
    so the run's latest state always stays; returns the deleted paths."""
    if keep < 1:
        raise ValueError(f"prune_checkpoints keeps at least one checkpoint, got keep={keep}")
    found = step_checkpoints(out_dir)
    doomed = [p for _, p in found[:-keep]]
    for p in doomed:
        p.unlink(missing_ok=True)
        digest_path(p).unlink(missing_ok=True)
    return doomed
