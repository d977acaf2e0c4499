"""The resume rules: may a rerun continue the run whose step checkpoints are in ``out_dir``?

A long pre-training is killed (OOM, a preempted SLURM node, Ctrl-C) and rerun with the same
command, often after an edit somewhere in the repository. What the rerun does depends on
what made the checkpoint's weights - the *shaping* of the run - against what would make them
now:

- the parameters that shape training (:func:`shaping_params`: everything in the resolved
  config except logging/checkpoint cadence, loader workers, paths and the other phase's
  blocks) and the inputs the command names (fine-tuning: the pre-trained checkpoint);
- a sha256 of every source file that shapes training (:func:`code_digests`: all of ``rap/``
  except the command line, tracking, reports, data preparation, atomic writing and these rules).

``--resume`` (``mode``):

``auto`` (the default)  same shaping: continue. Changed shaping and the earlier run had
                        finished: a new run, the earlier files moved aside. Changed shaping
                        and the earlier run was interrupted: stop before any work, naming
                        what changed and the two ways on.
``force``               continue from the newest checkpoint whatever changed (logged).
``no``                  start afresh; the earlier run's files are moved aside.

The checkpoint continued from is the newest one that loads: a step checkpoint that fails its
recorded sha256 or cannot be read (cut short by a partial copy, a filesystem fault) is named in
the log and moved to ``<out_dir>/set-aside/<time>-damaged/``, and the next newest is tried. When
none loads, ``auto`` stops (nothing moved) naming each file and why; ``no`` starts afresh, and
so does ``force`` (there is nothing to continue from). A file that ``torch.load(weights_only=True)``
refuses (:class:`rap.checkpoint_io.UnsafeCheckpoint`) is not damaged but foreign: it stops the
command.

Nothing here deletes a file: :func:`set_aside` moves ``checkpoints/``, ``best.pt``,
``checkpoint.pt`` and ``loss.csv`` to ``<out_dir>/set-aside/<time>-step-<N>/``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

from rap.checkpoint_io import DamagedCheckpoint, load_checkpoint
from rap.config import TOP_LEVEL_KNOBS, Params
from rap.errors import RapError
from rap.registry import ALL_DATASETS
from rap.training.checkpoint import digest_path, latest_checkpoint, step_checkpoints, verify_step_checkpoint

__all__ = [
    "ResumeMode",
    "ResumeConflict",
    "StartPlan",
    "shaping_params",
    "code_digests",
    "plan_start",
    "newest_loadable",
    "move_damaged",
    "set_aside",
    "SET_ASIDE_DIR",
]

log = logging.getLogger(__name__)

ResumeMode = Literal["auto", "force", "no"]
SET_ASIDE_DIR = "set-aside"
RUN_FILES = ("checkpoints", "best.pt", "checkpoint.pt", "loss.csv")
PACKAGE = Path(__file__).resolve().parents[1]

# Parameters that never change the weights a run produces (flat keys, or prefixes ending in ".").
_NEUTRAL_PARAMS = (
    "pretrain.optim.log_every",
    "pretrain.optim.checkpoint_every",
    "finetune.optim.log_every",
    "finetune.optim.checkpoint_every",
    "data.num_workers",
    "data.root",
    "data.check_sizes",
    "data.fetch",  # how downloads are fetched, and what share must arrive (data.<dataset>.min_success)
    *(f"data.{dataset}" for dataset in ALL_DATASETS),
    "datasets",
    "ablations",
    "finetune.tasks",
    "evaluate.zero_shot",
    "deterministic",  # error / warn / none changes what an op without a deterministic kernel does, not the weights
)
# (the process layout is not neutral: the world size decides each rank's share of every batch)
# ... and those that belong to the other phase (pre-training vs fine-tuning).
_OTHER_PHASE_PARAMS = {
    "pretrain": ("finetune.", "evaluate.", "data.frames_eval", "data.sampling_eval"),
    # fine-tuning starts from a checkpoint (an input of its own): pre-training's block and the
    # top-level knobs, which set pre-training's loss, do not shape it
    "finetune": ("pretrain.", *(k for k in TOP_LEVEL_KNOBS if k not in ("scale", "seed"))),
}
# Source files that do not shape the weights (repository-relative to rap/; dirs end in "/").
_NEUTRAL_CODE = (
    "atomic.py",
    "run_lock.py",
    "cli.py",
    "launch.py",
    "tracking.py",
    "errors.py",
    "reports/",
    "data/download.py",
    "data/fetch.py",
    "data/img2dataset.py",
    "data/importer.py",
    "data/manifest.py",
    "data/extract.py",
    "data/synthetic.py",
    "training/resume.py",
    "redundancy_metrics.py",
)
# Evaluation shapes fine-tuning (validation picks the kept epoch) but not pre-training.
_NEUTRAL_CODE_PRETRAIN = ("evaluation.py", "metrics.py")


def _phase(stage: str) -> str:
    """The phase of a training run's stage name (``pretrain``, ``finetune-<task>``)."""
    return "finetune" if stage.startswith("finetune") else "pretrain"


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) or key.startswith(p + ".") for p in patterns)


def shaping_params(params: Params, stage: str) -> dict[str, Any]:
    """The flat parameters that shape the weights of ``stage`` (``pretrain``,
    ``finetune-<task>``): fine-tuning keeps only its own task's epoch count."""
    phase = _phase(stage)
    neutral = _NEUTRAL_PARAMS + _OTHER_PHASE_PARAMS[phase]
    flat = {k: v for k, v in params.to_flat_dict().items() if not _matches(k, neutral)}
    if phase == "finetune":
        task = stage.removeprefix("finetune-")
        flat = {k: v for k, v in flat.items() if not k.startswith("finetune.epochs.") or k == f"finetune.epochs.{task}"}
    return flat


def code_digests(stage: str) -> dict[str, str]:
    """sha256 of every ``rap/`` source file that shapes ``stage``'s weights, by relative path."""
    neutral = _NEUTRAL_CODE + (_NEUTRAL_CODE_PRETRAIN if _phase(stage) == "pretrain" else ())
    digests = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if not any(rel == n or (n.endswith("/") and rel.startswith(n)) for n in neutral):
            digests[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


class ResumeConflict(RapError):
    """An interrupted run's checkpoints were made by other settings or code than this run's."""


@dataclass(frozen=True)
class StartPlan:
    """``checkpoint``: continue from it (None: start at step 0); ``set_aside``: move the
    earlier run's files aside first; ``reason``: for the log."""

    checkpoint: Path | None
    set_aside: bool
    reason: str


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], what: str) -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        if key not in old:
            out.append(f"{what} {key} added ({new[key]!r})")
        elif key not in new:
            out.append(f"{what} {key} removed (was {old[key]!r})")
        elif old[key] != new[key]:
            out.append(f"{what} {key}: {old[key]!r} -> {new[key]!r}" if what == "parameter" else f"{what} {key} edited")
    return out


def describe_changes(ckpt: Mapping[str, Any], shaping: Mapping[str, Any], code: Mapping[str, str]) -> list[str]:
    """What differs between the checkpoint's shaping and this run's, one line per item."""
    recorded = ckpt.get("shaping")
    if not isinstance(recorded, Mapping):
        return ["the checkpoint was written by a rap version that did not record its settings"]
    return _differences(recorded.get("params", {}), shaping, "parameter") + _differences(
        recorded.get("code", {}), code, "file rap/"
    )


def _stamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def newest_loadable(out_dir: Path) -> tuple[Path | None, dict[str, Any] | None, list[tuple[Path, str]]]:
    """The newest step checkpoint that matches its recorded digest and loads (its tensors
    memory-mapped), its content, and the newer ones that did not, with why: ``(path, ckpt,
    damaged)``; ``(None, None, damaged)`` when none loads."""
    damaged: list[tuple[Path, str]] = []
    for _, path in reversed(step_checkpoints(out_dir)):
        try:
            verify_step_checkpoint(path)
            return path, load_checkpoint(path, mmap=True), damaged
        except DamagedCheckpoint as err:
            damaged.append((path, str(err)))
    return None, None, damaged


def move_damaged(out_dir: Path, damaged: list[tuple[Path, str]]) -> Path | None:
    """Move each damaged checkpoint and its digest record to ``<out_dir>/set-aside/<time>-damaged/``."""
    if not damaged:
        return None
    dest = Path(out_dir) / SET_ASIDE_DIR / f"{_stamp()}-damaged"
    dest.mkdir(parents=True)
    for path, why in damaged:
        for file in (path, digest_path(path)):
            if file.exists():
                shutil.move(str(file), str(dest / file.name))
        log.warning("step checkpoint %s cannot be used (%s): moved to %s", path, why, dest)
    return dest


def _has_run_files(out_dir: Path) -> bool:
    return any((out_dir / name).exists() for name in RUN_FILES)


def plan_start(
    out_dir: Path, stage: str, shaping: Mapping[str, Any], code: Mapping[str, str], mode: ResumeMode
) -> StartPlan:
    """Apply the rules of the module docstring; raises :class:`ResumeConflict` (before any
    work) when ``auto`` finds an interrupted run of other settings or code, or the newest
    checkpoint belongs to another stage."""
    out_dir = Path(out_dir)
    if mode not in ("auto", "force", "no"):
        raise ValueError(f"resume mode must be auto, force or no, got {mode!r}")
    if mode == "no":
        return StartPlan(None, _has_run_files(out_dir), "fresh start requested (--resume no)")
    latest, ckpt, damaged = newest_loadable(out_dir)
    if latest is None and damaged:
        listing = "\n  ".join(f"{path}: {why}" for path, why in damaged)
        if mode == "force":
            return StartPlan(None, True, f"--resume force: no step checkpoint loads, starting afresh:\n  {listing}")
        raise ResumeConflict(
            f"no step checkpoint in {out_dir / 'checkpoints'} loads, nothing was moved:\n  {listing}\n"
            f"Start afresh with --resume no (or force): the run's files are then moved to "
            f"{out_dir / SET_ASIDE_DIR}/, nothing is deleted."
        )
    move_damaged(out_dir, damaged)
    if latest is None or ckpt is None:
        return StartPlan(None, _has_run_files(out_dir), f"no step checkpoint in {out_dir / 'checkpoints'}")
    if ckpt.get("stage") != stage:
        raise ResumeConflict(
            f"{latest} is a checkpoint of stage {ckpt.get('stage')!r}, not {stage!r}: "
            f"use another --out, or --resume no to move it aside and start afresh"
        )
    step, total = ckpt.get("position", {}).get("global_step"), ckpt.get("total_steps")
    changes = describe_changes(ckpt, shaping, code)
    if mode == "force":
        note = f"; continuing despite: {'; '.join(changes)}" if changes else ""
        return StartPlan(latest, False, f"--resume force from {latest.name}{note}")
    if not changes:
        return StartPlan(latest, False, f"same training settings and code as {latest.name}")
    if total is not None and step is not None and step >= total:
        return StartPlan(
            None,
            True,
            f"the run in {out_dir} finished ({step} steps) with other settings: a new run ({'; '.join(changes[:5])})",
        )
    raise ResumeConflict(
        f"{out_dir} holds an interrupted {stage} run (step {step} of {total}, {latest.name}) made with other "
        f"settings or code than this command's:\n  "
        + "\n  ".join(changes[:20])
        + ("\n  ..." if len(changes) > 20 else "")
        + "\nEither continue it anyway with --resume force, or start afresh with --resume no "
        f"(its files are then moved to {out_dir / SET_ASIDE_DIR}/, nothing is deleted)."
    )


def set_aside(out_dir: Path) -> Path | None:
    """Move the earlier run's files to ``<out_dir>/set-aside/<UTC time>-step-<N>/``; returns
    that folder (None when there was nothing to move)."""
    out_dir = Path(out_dir)
    present = [name for name in RUN_FILES if (out_dir / name).exists()]
    if not present:
        return None
    latest = latest_checkpoint(out_dir)
    step = latest.stem.removeprefix("step-").lstrip("0") or "0" if latest else "none"
    dest = out_dir / SET_ASIDE_DIR / f"{_stamp()}-step-{step}"
    dest.mkdir(parents=True)
    for name in present:
        shutil.move(str(out_dir / name), str(dest / name))
    log.warning("moved the earlier run's %s from %s to %s", ", ".join(present), out_dir, dest)
    return dest
