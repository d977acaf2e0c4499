"""Reading and writing checkpoint files: the atomic ``torch.save``, loading weights into a model.

Kept apart from :mod:`rap.training` so that evaluation and the figure load checkpoints
without importing the training engine. The contents of a training checkpoint are described
in :mod:`rap.training.checkpoint`.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rap.atomic import atomic_write

__all__ = ["atomic_save", "file_digest", "load_checkpoint", "load_model_weights"]

log = logging.getLogger(__name__)


def atomic_save(obj: Any, path: Path) -> Path:
    """``torch.save`` of ``obj`` to ``path``, atomically (:func:`rap.atomic.atomic_write`). The
    file object, not a path, goes to ``torch.save``: the temporary name is not in the bytes."""
    return atomic_write(path, lambda f: torch.save(obj, f))


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


def load_model_weights(
    model: nn.Module, path: Path, *, strict: bool = False, skip_prefixes: tuple[str, ...] = ()
) -> dict[str, list[str]]:
    """Load the ``model`` state of a checkpoint into ``model`` (fine-tuning from pre-training,
    evaluation). With ``strict=False`` keys present on one side only are allowed (e.g. the LM
    decoder of pre-training when fine-tuning switches it off) and listed in the log; a shape
    mismatch or an empty overlap is always an error. Keys under ``skip_prefixes`` are not read
    (the caller initialises them; they are reported missing)."""
    state = {k: v for k, v in load_checkpoint(path)["model"].items() if not k.startswith(skip_prefixes)}
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
