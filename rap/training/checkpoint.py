"""Checkpoints: atomic writes, exact resume, weight loading for fine-tuning and evaluation.

A training checkpoint ``<out>/checkpoints/step-00000050.pt`` holds everything an interrupted
run needs to finish with the *same* weights as an uninterrupted one:

``model``       state dict of the unwrapped model (the temperature and the momentum
                encoders/queues are parameters/buffers, so they come along)
``optimizer``, ``scheduler``, ``scaler``   their state dicts
``rng``         one entry per rank: python, numpy, torch CPU and CUDA generator states
``position``    ``{"epoch", "step_in_epoch", "global_step"}`` (optimiser steps)
``extra``       loop-owned state (best validation score, ...)
``params``      the resolved config, flat (``Params.to_flat_dict``), for provenance

The final ``<out>/checkpoint.pt`` has ``model``, ``params``, ``stage`` and ``step``;
:func:`load_model_weights` reads either kind.
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "atomic_save",
    "capture_rng_state",
    "restore_rng_state",
    "step_checkpoint_path",
    "latest_checkpoint",
    "prune_checkpoints",
    "load_checkpoint",
    "load_model_weights",
]

log = logging.getLogger(__name__)

_STEP_RE = re.compile(r"^step-(\d+)\.pt$")


def atomic_save(obj: Any, path: Path) -> Path:
    """``torch.save`` to a temporary file in the same directory, fsync, then ``os.replace``:
    a kill at any moment leaves either the old file or the complete new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


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
            log.warning("checkpoint has CUDA RNG states for %d devices, %d visible: CUDA RNG not restored",
                        len(cuda_states), torch.cuda.device_count())


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
    """Delete all but the ``keep`` newest step checkpoints; returns the deleted paths."""
    found = _step_checkpoints(out_dir)
    doomed = [p for _, p in found[:-keep]] if keep > 0 else [p for _, p in found]
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed


def code_fingerprint() -> str:
    """sha256 over the source of the ``rap`` package: a checkpoint written by other code is
    never resumed automatically (its weights would not be what this code trains)."""
    import hashlib

    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def resumable_checkpoint(out_dir: Path, stage: str, flat_params: dict[str, Any]) -> Path | None:
    """The newest step checkpoint in ``out_dir`` written by an unfinished run of the same stage,
    parameters and code, or None: what ``--resume auto`` continues from (a killed
    ``dvc repro`` picks up where it stopped; anything else starts fresh)."""
    latest = latest_checkpoint(out_dir)
    if latest is None:
        return None
    ckpt = torch.load(latest, map_location="cpu", weights_only=False, mmap=True)
    same = (ckpt.get("stage") == stage and ckpt.get("params") == flat_params
            and ckpt.get("code") == code_fingerprint())
    if not same:
        log.info("%s was written by another configuration or code version: not resuming from it", latest)
    return latest if same else None


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by this module (RNG states and numpy arrays included, so the
    pickle is trusted: only load files this pipeline wrote)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torn or foreign file: say which one
        raise RuntimeError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise RuntimeError(f"{path} is not a rap checkpoint (no 'model' entry)")
    return ckpt


def load_model_weights(model: nn.Module, path: Path, *, strict: bool = False) -> dict[str, list[str]]:
    """Load the ``model`` state of a checkpoint into ``model`` (fine-tuning from pre-training,
    evaluation). With ``strict=False`` keys present on one side only are allowed (e.g. the LM
    decoder of pre-training when fine-tuning switches it off) and listed in the log; a shape
    mismatch or an empty overlap is always an error."""
    state = load_checkpoint(path)["model"]
    own = model.state_dict()
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise RuntimeError(f"{path}: {len(bad)} tensor(s) do not fit the model "
                           f"(was it trained with another model config?): {bad[:5]}")
    if not set(state) & set(own):
        raise RuntimeError(f"{path}: no parameter name in common with {type(model).__name__}")
    result = model.load_state_dict(state, strict=strict)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        log.info("loaded %s: %d missing key(s) %s, %d unused key(s) %s", path, len(missing), missing[:5],
                 len(unexpected), unexpected[:5])
    return {"missing": missing, "unexpected": unexpected}
