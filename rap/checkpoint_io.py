"""Reading and writing checkpoint files: atomic writes, loading weights into a model.

Kept apart from :mod:`rap.training` so that evaluation and the figure load checkpoints
without importing the training engine. The contents of a training checkpoint are described
in :mod:`rap.training.checkpoint`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch
from torch import nn

__all__ = ["atomic_save", "write_json_atomic", "file_digest", "load_checkpoint", "load_model_weights"]

log = logging.getLogger(__name__)


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """``write`` into a temporary file in the same directory, fsync, then ``os.replace``: a kill
    at any moment leaves either the old file or the complete new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_save(obj: Any, path: Path) -> Path:
    """``torch.save`` of ``obj`` to ``path``, atomically."""
    return _atomic_write(path, lambda f: torch.save(obj, f))


def write_json_atomic(data: Any, path: Path) -> Path:
    """``data`` as indented JSON to ``path``, atomically: readers never see half a file (the
    run files of training and the metrics files of evaluation)."""
    text = (json.dumps(data, indent=2) + "\n").encode("utf-8")
    return _atomic_write(path, lambda f: f.write(text))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by this pipeline (RNG states and numpy arrays included, so the
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
    bad = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if bad:
        raise RuntimeError(
            f"{path}: {len(bad)} tensor(s) do not fit the model (was it trained with another model config?): {bad[:5]}"
        )
    if not set(state) & set(own):
        raise RuntimeError(f"{path}: no parameter name in common with {type(model).__name__}")
    result = model.load_state_dict(state, strict=strict)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        log.info(
            "loaded %s: %d missing key(s) %s, %d unused key(s) %s",
            path,
            len(missing),
            missing[:5],
            len(unexpected),
            unexpected[:5],
        )
    return {"missing": missing, "unexpected": unexpected}


def file_digest(path: Path) -> str:
    """sha256 of a file: the identity of a checkpoint (fine-tuning's input; the MLflow link
    from an evaluation to the training run that wrote the file)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
