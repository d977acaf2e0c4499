"""Reading and writing checkpoint files: the atomic ``torch.save``, loading weights into a model.

Loading never runs code: every checkpoint rap reads goes through :func:`load_checkpoint`, i.e.
``torch.load(weights_only=True)``, whose unpickler builds tensors and plain containers only and
refuses any other global a pickle names (a downloaded or shared file whose ``__reduce__`` would
call ``os.system``). rap's own checkpoints hold nothing else (RNG states as tensors, ints and
tuples: :mod:`rap.training.checkpoint`). The one explicit allowlist is numpy's array
reconstruction, which only builds arrays: step checkpoints written by earlier rap versions hold
numpy's RNG state as an array. A refused file stops the command with
:class:`UnsafeCheckpoint`, a file that cannot be read with :class:`DamagedCheckpoint`; both
name the file and say why (no traceback: they are :class:`rap.errors.RapError`).

Kept apart from :mod:`rap.training` so that evaluation and the figure load checkpoints
without importing the training engine. The contents of a training checkpoint are described
in :mod:`rap.training.checkpoint`.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rap.atomic import atomic_write
from rap.errors import RapError

__all__ = [
    "CheckpointError",
    "UnsafeCheckpoint",
    "DamagedCheckpoint",
    "atomic_save",
    "file_digest",
    "load_checkpoint",
    "load_model_weights",
]

log = logging.getLogger(__name__)

# numpy's array reconstruction (arrays only, no code): the RNG states of step checkpoints that
# rap wrote before its checkpoints held plain types only.
_LEGACY_NUMPY_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")  # "Unsupported global: GLOBAL x" / "unsupported GLOBAL x whose module"
_UNPICKLER_ERROR = re.compile(r"WeightsUnpickler error: ([^\n]+)")


class CheckpointError(RapError):
    """A checkpoint file that rap will not or cannot load."""


class UnsafeCheckpoint(CheckpointError):
    """``torch.load(weights_only=True)`` refused the file: loading it could run code."""


class DamagedCheckpoint(CheckpointError):
    """The file cannot be read as a checkpoint (truncated, corrupt, not a torch file)."""


def atomic_save(obj: Any, path: Path) -> Path:
    """``torch.save`` of ``obj`` to ``path``, atomically (:func:`rap.atomic.atomic_write`). The
    file object, not a path, goes to ``torch.save``: the temporary name is not in the bytes."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def _refusal(err: pickle.UnpicklingError) -> str | None:
    """What ``weights_only`` refused, or None when the file is just not a readable pickle
    (garbage reads as an opcode the weights-only unpickler does not know: damaged, not unsafe)."""
    text = str(err)
    if "Weights only load failed" not in text or "Unsupported operand" in text:
        return None
    if found := _REFUSED_GLOBAL.search(text):
        return f"its pickle asks to call or build {found.group(1)}, which could run code"
    detail = (
        found.group(1).strip() if (found := _UNPICKLER_ERROR.search(text)) else "refused by the weights-only unpickler"
    )
    return f"its pickle holds something other than tensors and plain data ({detail})"


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu", *, mmap: bool = False) -> dict[str, Any]:
    """Read a rap checkpoint with ``torch.load(weights_only=True)`` (never runs code from the
    file); ``mmap`` maps the tensors instead of reading them (a cheap look at a large file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(_LEGACY_NUMPY_GLOBALS):
            ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if (why := _refusal(err)) is None:
            raise DamagedCheckpoint(f"cannot read checkpoint {path}: {err}") from None
        raise UnsafeCheckpoint(
            f"refused to load {path}: {why}. rap loads checkpoints with torch.load(weights_only=True); "
            "a checkpoint written by rap holds tensors and plain data only. Do not load this file "
            "unless you know who made it and what it runs."
        ) from None
    except Exception as err:  # torn or foreign file: say which one
        raise DamagedCheckpoint(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise DamagedCheckpoint(f"{path} is not a rap checkpoint (no 'model' entry)")
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
