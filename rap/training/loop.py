"""The training loop shared by pre-training and fine-tuning (paper 5.4).

One code path for a CPU process, one GPU, ``torchrun --nproc_per_node=G`` and multi-node
``torchrun``: the model is wrapped in DDP when the world has more than one rank, and the
contrastive losses see the global batch (``gather=True``), as the paper's 64-GPU
pre-training does.

Per optimiser step: ``grad_accum`` micro-batches (DDP ``no_sync`` on all but the last), autocast
(bf16/fp16) around the forward pass, a collective non-finite check of every loss term before
backward, gradient clipping, AdamW, the lr schedule, and the temperature clamp (tau in
[temp_min, temp_max], paper 3.2 / released code).

Per optimiser step there is one collective of the loop's own (a single all-reduce of every
loss term, the non-finite flags and the stop flag) and one host sync (reading it back).

Exact resume: a checkpoint carries model, optimiser, scheduler, scaler, every rank's RNG states
*and* the RNG states at the start of the current epoch. Resuming at (epoch e, micro-batch s)
restores the epoch-start states, re-creates the epoch's data iterator at micro-batch ``s``
(:class:`LoaderEpochs` seeks: :class:`rap.data.datasets.TrainLoader` is a pure function of
seed, epoch, step and rank), then restores the checkpoint's states. The run then ends with
bit-identical weights on the CPU (tests/test_resume.py; single-threaded kernels, since some
multi-threaded CPU reductions are not bit-reproducible run to run). Whether a rerun continues,
starts afresh or stops is decided by :mod:`rap.training.resume`; nothing here deletes a
run's files except the rotation of its own step checkpoints.

Preemption: SIGTERM, SIGUSR1 and SIGURG are caught (SLURM's preemption, torchrun forwarding a
SIGTERM, and the SLURM profile's ``--signal=URG@120``: SIGURG, which the processes between
SLURM and the ranks - Snakemake's job step, bash, torchrun - ignore, reaches the ranks alone);
at the next optimiser-step boundary every rank agrees to stop, a step checkpoint is written
and :class:`TrainingInterrupted` is raised (the CLI exits with 128 + the signal number), so
the retried job resumes where this one stopped.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import logging
import math
import platform
import resource
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from rap import cpu_kernels, launch, run_lock, tracking
from rap import distributed as rdist
from rap.atomic import write_json_atomic
from rap.checkpoint_io import atomic_save, file_digest, load_checkpoint
from rap.config import LossConfig, OptimConfig, Params
from rap.errors import RapError
from rap.precision import apply_tf32, training_dtype
from rap.run_files import TRAIN_METRICS, TRAIN_RUN, TRAIN_TIMINGS
from rap.training import resume as resume_rules
from rap.training.checkpoint import (
    capture_rng_state,
    prune_checkpoints,
    restore_rng_state,
    save_step_checkpoint,
    step_checkpoint_path,
)
from rap.training.determinism import seed_everything  # re-exported: pretrain/finetune import it here
from rap.training.optim import build_optimizer, build_scheduler

if TYPE_CHECKING:
    from rap.data.datasets import TrainLoader

__all__ = [
    "NonFiniteLossError",
    "TrainingInterrupted",
    "RUN_OUTPUTS",
    "distributed_session",
    "run_dir_lock",
    "distill_alpha",
    "DistContext",
    "EpochData",
    "LoaderEpochs",
    "Validation",
    "seed_everything",
    "resolve_precision",
    "train",
]

log = logging.getLogger(__name__)

KEEP_STEP_CHECKPOINTS = 3


# What a training run writes besides its checkpoints (rap/run_files.py says what each holds).
RUN_OUTPUTS = {"metrics": TRAIN_METRICS, "run": TRAIN_RUN, "timings": TRAIN_TIMINGS}


class NonFiniteLossError(RapError, FloatingPointError):
    """A loss term (or the gradient norm) became NaN/inf; the message names step and term(s)."""


class TrainingInterrupted(RapError):
    """A stop signal arrived; a checkpoint was written at ``step``: rerun the command to resume."""

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(
            f"stopped by {signal.Signals(signum).name} after optimiser step {step}; checkpoint "
            f"{checkpoint} written: rerun the same command to resume from it"
        )


@dataclass(frozen=True)
class DistContext:
    """What :func:`rap.distributed.init_distributed` returned."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class EpochData(Protocol):
    """Micro-batches of one rank, epoch by epoch.

    ``len()`` is the number of micro-batches per epoch (equal on every rank);
    ``iterator(epoch, start)`` yields the epoch's micro-batches from index ``start`` on and
    must draw whatever it draws from the global RNG *when it is called* (the loop calls it at a
    controlled moment, see the module docstring); the TrainLoader draws nothing from it."""

    def __len__(self) -> int: ...

    def iterator(self, epoch: int, start: int) -> Iterator[Mapping[str, Any]]: ...


class LoaderEpochs:
    """:class:`EpochData` over a :class:`rap.data.datasets.TrainLoader`.

    Its batches are a pure function of seed, epoch, step and rank; ``set_position`` jumps
    straight to ``start`` (no batch before it is read), and its one DataLoader and persistent
    workers serve every epoch. The first batch is fetched eagerly, so that anything a loader
    draws when it starts iterating is drawn inside the call.
    """

    def __init__(self, loader: TrainLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return self.loader.steps_per_epoch

    def iterator(self, epoch: int, start: int) -> Iterator[Mapping[str, Any]]:
        self.loader.set_position(epoch, start)  # seeks: no batch before `start` is decoded
        it = iter(self.loader)
        first = next(it, None)
        return iter(()) if first is None else itertools.chain([first], it)


class Validation(Protocol):
    """Called on EVERY rank after each epoch with the unwrapped model in eval mode (it may
    shard its work across ranks; all ranks must return the same values); returns the
    selection score (higher is better) and the metrics to log."""

    def __call__(self, model: nn.Module, epoch: int) -> tuple[float, dict[str, float]]: ...


# --------------------------------------------------------------------------------------
# Set-up helpers
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def distributed_session() -> Iterator[DistContext]:
    """Join torchrun's process group (no-op for one process) and leave it afterwards if this
    call created it."""
    existed = dist.is_available() and dist.is_initialized()
    rank, world, local_rank, device = rdist.init_distributed()
    # what SLURM's CPU binding left this rank (tests/test_slurm.py reads this line)
    log.info("rank %d of %d: %d CPU(s) available to this process", rank, world, launch.available_cpus())
    try:
        yield DistContext(rank, world, local_rank, device)
    finally:
        if not existed:
            rdist.cleanup()


@contextlib.contextmanager
def run_dir_lock(out_dir: Path, stage: str, ctx: DistContext, resume: bool | str) -> Iterator[run_lock.RunLock | None]:
    """One writer per run directory (:mod:`rap.run_lock`): rank 0 takes ``<out_dir>/rap.lock``
    before any work and holds it to the end; every rank stops at once when it cannot.
    ``--resume force`` takes over a holder on another host that rap cannot check."""
    force = _resume_mode(resume) == "force"
    lock = rdist.on_main(lambda: run_lock.acquire(run_lock.lock_path(out_dir), stage, force=force), share=False)
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()


def distill_alpha(loss: LossConfig, epoch_float: float) -> float:
    """Momentum-distillation weight, ramped linearly from 0 to ``loss.distill_alpha`` over the
    first ``loss.distill_ramp_epochs`` epochs (released code, BLIP); 0 without momentum."""
    if not loss.momentum:
        return 0.0
    if loss.distill_ramp_epochs <= 0:
        return loss.distill_alpha
    return loss.distill_alpha * min(1.0, epoch_float / loss.distill_ramp_epochs)


# the one definition lives in rap.precision; the loop's name stays for its callers
resolve_precision = training_dtype


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors to ``device``; other entries (captions, source name, skipped files) unchanged."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _pad_text(batch: dict[str, Any], length: int, pad_id: int) -> dict[str, Any]:
    """Right-pad ``input_ids``/``attention_mask`` to ``length``. Under DDP the losses all-gather
    token features, which needs the same L on every rank, while the collate pads each rank's
    batch only to its own longest caption. Padding is masked everywhere, so this changes no value."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    extra = length - ids.shape[1]
    if extra > 0:
        batch = dict(batch)
        batch["input_ids"] = torch.nn.functional.pad(ids, (0, extra), value=pad_id)
        batch["attention_mask"] = torch.nn.functional.pad(mask, (0, extra), value=0)
    return batch


def _batch_size(batch: Mapping[str, Any]) -> int:
    for key in ("input_ids", "video"):
        if isinstance(batch.get(key), torch.Tensor):
            return int(batch[key].shape[0])
    raise KeyError(f"batch has neither 'input_ids' nor 'video' (keys: {sorted(batch)})")


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


# --------------------------------------------------------------------------------------
# MLflow, CSV, summary: rank 0 only, all in one place
# --------------------------------------------------------------------------------------


class _Reporter:
    """Writes ``loss.csv`` (DVC plots) and logs metrics to MLflow through :mod:`rap.tracking`:
    the one place the loop talks to either. Only rank 0 has an active reporter."""

    def __init__(self, out_dir: Path, active: bool, resume_step: int) -> None:
        self.active = active
        self.csv_path = out_dir / "loss.csv"
        self.columns: list[str] | None = None
        if active and self.csv_path.exists():
            self._truncate_csv(resume_step)

    def _truncate_csv(self, resume_step: int) -> None:
        """Drop rows logged after the checkpoint we resume from (a fresh run drops all)."""
        with self.csv_path.open(newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        header, body = rows[0], rows[1:]
        keep = [r for r in body if r and int(r[0]) <= resume_step]
        if resume_step == 0:
            keep = []
        with self.csv_path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(keep)
        self.columns = header

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.active:
            tracking.log_metrics(metrics, step)

    def log(self, metrics: dict[str, float], step: int, epoch: float, loss_terms: dict[str, float], lr: float) -> None:
        """MLflow metrics and one ``loss.csv`` row (step, epoch, each loss term, lr)."""
        if not self.active:
            return
        self.metrics(metrics, step)
        if self.columns is None or not self.csv_path.exists():
            self.columns = ["step", "epoch", *loss_terms.keys(), "lr"]
            with self.csv_path.open("w", newline="") as f:
                csv.writer(f).writerow(self.columns)
        row = {
            "step": step,
            "epoch": f"{epoch:.4f}",
            "lr": f"{lr:.6g}",
            **{k: f"{v:.6f}" for k, v in loss_terms.items()},
        }
        with self.csv_path.open("a", newline="") as f:
            csv.writer(f).writerow([row.get(c, "") for c in self.columns])


def _stage_run(stage: str, params: Params, active: bool, out_dir: Path) -> contextlib.AbstractContextManager:
    """The stage's MLflow run; what MLflow cannot take is spooled in ``out_dir`` (rap.tracking)."""
    return tracking.stage_run(stage, params, spool=out_dir) if active else contextlib.nullcontext()


# --------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------


@dataclass
class _Position:
    epoch: int = 0
    step_in_epoch: int = 0  # optimiser steps done in `epoch`
    global_step: int = 0


@dataclass
class _Window:
    """Running sums between two log points."""

    terms: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    clips: int = 0
    skipped: int = 0
    lr: float = 0.0  # lr of the window's last step
    t0: float = field(default_factory=time.perf_counter)

    def add(self, terms: dict[str, float], clips: int, skipped: int) -> None:
        for k, v in terms.items():
            self.terms[k] = self.terms.get(k, 0.0) + v
        self.steps += 1
        self.clips += clips
        self.skipped += skipped

    def means(self) -> dict[str, float]:
        return {k: v / max(1, self.steps) for k, v in self.terms.items()}


def _loss_terms(out: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The scalar tensors of the model's output ("loss" first)."""
    if "loss" not in out:
        raise KeyError(f"model output has no 'loss' (keys: {sorted(out)})")
    terms = {"loss": out["loss"]}
    terms.update({k: v for k, v in out.items() if k != "loss" and isinstance(v, torch.Tensor) and v.ndim == 0})
    return terms


class _StopSignals:
    """Catches SIGTERM, SIGUSR1 and SIGURG for the duration of a run (main thread only) and
    remembers the first one; the loop acts on it at the next optimiser-step boundary."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGURG)

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.signum:
            log.warning(
                "received %s: stopping at the next step boundary with a checkpoint", signal.Signals(signum).name
            )
        self.signum = self.signum or signum

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _machine() -> str:
    return f"{platform.node()} ({platform.machine()}, {torch.get_num_threads()} torch threads)"


@dataclass
class _Run:
    """The state of one training run and the operations on it; :func:`train` drives it."""

    stage: str
    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype
    optim_cfg: OptimConfig
    params: Params
    out_dir: Path
    ctx: DistContext
    steps_per_epoch: int
    total_steps: int
    shaping: dict[str, Any]
    pos: _Position = field(default_factory=_Position)
    extra: dict[str, Any] = field(
        default_factory=lambda: {
            "best_score": None,
            "best_epoch": None,
            "val_history": [],
            "final_loss_terms": {},
            "flops_per_step": None,
        }
    )
    ckpt_rng: dict | None = None
    epoch_rng: dict | None = None
    resumed_from: Path | None = None
    lock: run_lock.RunLock | None = None  # rank 0's hold on out_dir

    # ---- start -------------------------------------------------------------------------

    def start(self, mode: resume_rules.ResumeMode) -> None:
        """Decide (rank 0, which also moves damaged checkpoints aside; every rank gets the
        plan), set the earlier run aside (rank 0) and restore the checkpoint to continue from."""
        plan = rdist.on_main(
            lambda: resume_rules.plan_start(
                self.out_dir, self.stage, self.shaping["params"], self.shaping["code"], mode
            )
        )
        log.info("%s: %s", self.stage, plan.reason)
        if plan.set_aside and self.ctx.is_main:
            resume_rules.set_aside(self.out_dir)
        rdist.barrier()
        if plan.checkpoint is not None:
            self._restore(plan.checkpoint)

    def _restore(self, path: Path) -> None:
        ckpt = load_checkpoint(path)  # on the CPU: RNG states must stay CPU tensors
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.pos = _Position(**ckpt["position"])
        if self.pos.step_in_epoch >= self.steps_per_epoch:
            raise resume_rules.ResumeConflict(
                f"{path}: position {ckpt['position']} does not fit {self.steps_per_epoch} steps per epoch "
                f"(batch size, grad_accum or world size changed?)"
            )
        self.extra.update(ckpt.get("extra", {}))
        if len(ckpt["rng"]) == self.ctx.world:
            self.ckpt_rng, self.epoch_rng = ckpt["rng"][self.ctx.rank], ckpt["epoch_rng"][self.ctx.rank]
        else:
            log.warning(
                "%s was written by %d rank(s), this run has %d: RNG streams start afresh",
                path,
                len(ckpt["rng"]),
                self.ctx.world,
            )
        self.resumed_from = path
        log.info("%s: resumed from %s at epoch %d, step %d", self.stage, path, self.pos.epoch, self.pos.global_step)

    # ---- checkpoints ---------------------------------------------------------------------

    def save_step_checkpoint(self, epoch_rng_now: dict) -> Path:
        path = step_checkpoint_path(self.out_dir, self.pos.global_step)
        rngs = rdist.gather_objects(capture_rng_state())
        epoch_rngs = rdist.gather_objects(epoch_rng_now)
        if self.ctx.is_main:
            if self.lock is not None:
                self.lock.check()  # another process took out_dir over: stop writing there
            state = {
                "stage": self.stage,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rngs,
                "epoch_rng": epoch_rngs,
                "position": vars(self.pos).copy(),
                "extra": dict(self.extra),
                "params": self.params.to_flat_dict(),
                "shaping": self.shaping,
                "total_steps": self.total_steps,
            }
            save_step_checkpoint(state, path)
            prune_checkpoints(self.out_dir, KEEP_STEP_CHECKPOINTS)
        rdist.barrier()
        return path

    # ---- validation ----------------------------------------------------------------------

    def validate(self, validation: Validation | None, epoch: int, reporter: "_Reporter") -> None:
        """Every rank takes part (the validation shards its work); rank 0 keeps the best."""
        if validation is None:
            return
        self.model.eval()
        with torch.no_grad():
            score, metrics = validation(self.model, epoch)
        self.model.train()
        reporter.metrics({f"val/{k}": v for k, v in metrics.items()} | {"val/score": score}, self.pos.global_step)
        log.info("%s epoch %d validation score %.3f %s", self.stage, epoch, score, metrics)
        self.extra["val_history"] = [*self.extra["val_history"], {"epoch": epoch, "score": score, **metrics}]
        if self.extra["best_score"] is None or score > self.extra["best_score"]:
            self.extra["best_score"], self.extra["best_epoch"] = score, epoch
            if self.ctx.is_main:
                atomic_save(
                    {
                        "stage": self.stage,
                        "model": self.model.state_dict(),
                        "params": self.params.to_flat_dict(),
                        "step": self.pos.global_step,
                        "epoch": epoch,
                        "score": score,
                        "metrics": metrics,
                    },
                    self.out_dir / "best.pt",
                )
        rdist.barrier()

    # ---- one optimiser step ----------------------------------------------------------------

    def optimizer_step(
        self,
        batches: Iterator[Mapping[str, Any]],
        n_micro: int,
        kwargs: dict[str, Any],
        text_pad: tuple[int, int] | None,
        stop: _StopSignals,
    ) -> tuple[dict[str, float], int, int, float, int]:
        """``n_micro`` micro-batches (DDP ``no_sync`` on all but the last), one agreement over
        ranks, clipping, AdamW, the schedule and the temperature clamp. Returns (loss terms,
        clips, skipped clips, grad norm, stop signal agreed by the ranks)."""
        device, distributed = self.ctx.device, self.ctx.world > 1 and rdist.is_distributed()
        clips = skipped = 0
        step_terms = rdist.StepTerms()  # on the device: no host sync per micro-batch
        # FLOPs of one optimiser step (forward + backward, this rank), counted on the first step
        # only: FlopCounterMode observes the real step, it adds no compute.
        counting = self.extra["flops_per_step"] is None
        with FlopCounterMode(display=False) if counting else contextlib.nullcontext() as counter:
            for i in range(n_micro):
                batch = _to_device(next(batches), device)
                if distributed and text_pad is not None:
                    batch = _pad_text(batch, *text_pad)
                clips += _batch_size(batch) * self.ctx.world
                skipped += int(batch.get("n_skipped", 0))  # unusable clips replaced by the loader
                last = i == n_micro - 1
                with self.net.no_sync() if distributed and not last else contextlib.nullcontext():
                    with torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.amp_dtype != torch.float32):
                        out = self.net(batch, **kwargs)
                    terms = _loss_terms(out)
                    step_terms.add(terms, 1.0 / n_micro)
                    self.scaler.scale(terms["loss"] / n_micro).backward()
        if counting:
            self.extra["flops_per_step"] = counter.get_total_flops()
        self.scaler.unscale_(self.optimizer)
        with_grad = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        max_norm = self.optim_cfg.clip_grad if self.optim_cfg.clip_grad > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(with_grad, max_norm)
        # The step's one collective and one host read: the rank-mean of every term, which ranks
        # saw a NaN/inf (every rank raises together: none is left waiting in a collective) and
        # whether any rank caught a stop signal. A NaN loss leaves NaN gradients, never NaN
        # weights: this comes before the update.
        means, bad = step_terms.reduce(
            {"grad_norm": norm, "stop": torch.tensor(1.0 if stop.signum else 0.0, device=device)}
        )
        grad_norm, stop_any = means.pop("grad_norm"), means.pop("stop") > 0
        bad_terms = [name for name in bad if name not in ("grad_norm", "stop")]
        if bad_terms:
            raise NonFiniteLossError(
                f"non-finite loss at optimiser step {self.pos.global_step + 1} (epoch "
                f"{self.pos.epoch}): term(s) {bad_terms} not finite on at least one rank"
            )
        if "grad_norm" in bad and not self.scaler.is_enabled():
            raise NonFiniteLossError(
                f"non-finite gradient norm at optimiser step {self.pos.global_step + 1} "
                f"(epoch {self.pos.epoch}); loss terms {means}"
            )
        step_terms_host = means
        stop_signal = (stop.signum or int(signal.SIGTERM)) if stop_any else 0
        self.scaler.step(self.optimizer)  # skipped by the scaler when fp16 gradients overflowed
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            # fp16: the scaler skips steps whose gradients overflowed (the first ones, while it
            # calibrates); the schedule still advances, one entry per step.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            self.scheduler.step()
        if hasattr(self.model, "clamp_temperature"):
            self.model.clamp_temperature()
        self.pos.global_step += 1
        self.pos.step_in_epoch += 1
        self.extra["final_loss_terms"] = step_terms_host
        return step_terms_host, clips, skipped, grad_norm, stop_signal

    # ---- outputs ---------------------------------------------------------------------------

    def finish(
        self,
        validation: Validation | None,
        extra_params: Mapping[str, Any],
        timings: dict[str, Any],
        reporter: "_Reporter",
    ) -> Path:
        """``checkpoint.pt`` (the best validation epoch, else the last step) and the three run
        files of :data:`RUN_OUTPUTS`; rank 0 writes, every rank returns the path."""
        final = self.out_dir / "checkpoint.pt"
        finished = self.pos.global_step >= self.total_steps
        if self.ctx.is_main:
            if validation is not None and (self.out_dir / "best.pt").exists():
                state = load_checkpoint(self.out_dir / "best.pt")
            else:
                state = {
                    "stage": self.stage,
                    "model": self.model.state_dict(),
                    "params": self.params.to_flat_dict(),
                    "step": self.pos.global_step,
                }
            state["finished"] = finished
            atomic_save(state, final)
            # the evaluations of this file find this run by its digest (rap.evaluation)
            tracking.set_tags({tracking.CHECKPOINT_DIGEST_TAG: file_digest(final), "rap.checkpoint": str(final)})
            metrics = {"final_loss": self.extra["final_loss_terms"], "flops_per_step": self.extra["flops_per_step"]}
            if self.extra["best_score"] is not None:
                metrics["best_val_score"] = self.extra["best_score"]
            run = {
                "stage": self.stage,
                **dict(extra_params),
                "steps": self.pos.global_step,
                "total_steps": self.total_steps,
                "finished": finished,
                "epochs": self.pos.global_step / self.steps_per_epoch,
                "world_size": self.ctx.world,
                "precision": str(self.amp_dtype).replace("torch.", ""),
                "best_epoch": self.extra["best_epoch"],
                "validation": self.extra["val_history"],
                "resumed_from": str(self.resumed_from) if self.resumed_from else None,
                "checkpoint": str(final),
                "cpu": cpu_kernels.provenance(),
            }
            for kind, data in (("metrics", metrics), ("run", run), ("timings", timings)):
                write_json_atomic(data, self.out_dir / RUN_OUTPUTS[kind])
            reporter.metrics(
                {f"summary/{k}": v for k, v in timings.items() if isinstance(v, (int, float))}
                | {"summary/steps": self.pos.global_step},
                self.pos.global_step,
            )
        rdist.barrier()
        return final


def _resume_mode(resume: bool | str) -> resume_rules.ResumeMode:
    """``True``/``False`` (the Python API's old spelling) are ``force``/``no``."""
    if resume is True:
        return "force"
    if resume is False:
        return "no"
    return resume  # type: ignore[return-value]


def _wrap(model: nn.Module, ctx: DistContext, grad_comm: str = "fp32") -> nn.Module:
    """DDP around ``model`` when the world has more than one rank. ``grad_comm`` (``optim.grad_comm``):
    ``fp32`` keeps DDP's own all-reduce of fp32 gradient buckets; ``bf16`` registers torch's
    ``bf16_compress_hook`` (each bucket cast to bf16, all-reduced, divided by the world size and
    cast back: half the bytes of the step's largest transfer, benchmarks/bench_step.py; gloo
    and NCCL both reduce bf16)."""
    if not (ctx.world > 1 and rdist.is_distributed()):
        return model
    # DDP's search for unused parameters costs a graph walk every step: only where a head is
    # switched off (a zero loss weight) and its parameters get no gradient.
    unused = model.unused_parameter_names() if hasattr(model, "unused_parameter_names") else {"unknown"}
    ddp = DistributedDataParallel(
        model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None, find_unused_parameters=bool(unused)
    )
    if grad_comm == "bf16":
        ddp.register_comm_hook(None, default_hooks.bf16_compress_hook)
    return ddp


def train(
    *,
    model: nn.Module,
    data: EpochData,
    stage: str,
    optim_cfg: OptimConfig,
    epochs: int,
    params: Params,
    out_dir: Path,
    ctx: DistContext,
    resume: bool | str = False,
    max_steps: int | None = None,
    forward_kwargs: Callable[[float], dict[str, Any]] | None = None,
    validation: Validation | None = None,
    extra_params: Mapping[str, Any] | None = None,
    text_pad: tuple[int, int] | None = None,
    inputs: Mapping[str, str] | None = None,
    lock: run_lock.RunLock | None = None,
) -> Path:
    """Train ``model`` for ``epochs`` epochs of ``data``; returns ``<out_dir>/checkpoint.pt``.

    ``resume``: ``auto`` | ``force`` | ``no`` (:mod:`rap.training.resume`; True/False mean
    force/no). ``inputs``: digests of files that shape the run besides params and code (the
    pre-trained checkpoint of a fine-tuning). ``forward_kwargs(epoch_float)`` gives per-step
    keyword arguments of ``model.forward`` besides ``gather``. With ``validation`` the final
    checkpoint holds the best-scoring epoch's weights (``best.pt``), otherwise the last.
    ``max_steps`` stops after that many optimiser steps in total (a checkpoint is written).
    ``text_pad`` = ``(length, pad_id)``: under DDP every rank's text is padded to ``length``
    (equal shapes for the all-gathers of the losses). ``lock``: rank 0's hold on ``out_dir``
    (:func:`run_dir_lock`), checked before each step checkpoint.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    micro_per_epoch = len(data)
    if micro_per_epoch < 1:
        raise ValueError(
            f"{stage}: the training data yields no batch (batch_size={optim_cfg.batch_size} "
            f"per rank x {ctx.world} rank(s) larger than the training set?)"
        )
    accum = optim_cfg.grad_accum
    steps_per_epoch = math.ceil(micro_per_epoch / accum)  # the last step of an epoch may hold fewer
    total_steps = steps_per_epoch * epochs

    model.to(ctx.device)
    if optim_cfg.grad_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise ValueError(
                f"optim.grad_checkpointing is on but {type(model).__name__} has no set_grad_checkpointing()"
            )
        model.set_grad_checkpointing(True)
    optimizer = build_optimizer(model, optim_cfg)
    amp_dtype = training_dtype(optim_cfg.precision, ctx.device)
    apply_tf32(optim_cfg.tf32, ctx.device)
    shaping = {
        "params": {**resume_rules.shaping_params(params, stage), **dict(inputs or {})},
        "code": resume_rules.code_digests(stage),
    }
    run = _Run(
        stage=stage,
        model=model,
        net=_wrap(model, ctx, optim_cfg.grad_comm),
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, optim_cfg, steps_per_epoch, total_steps),
        scaler=torch.amp.GradScaler(ctx.device.type, enabled=amp_dtype == torch.float16),
        amp_dtype=amp_dtype,
        optim_cfg=optim_cfg,
        params=params,
        out_dir=out_dir,
        ctx=ctx,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        shaping=shaping,
        lock=lock,
    )
    run.start(_resume_mode(resume))
    pos = run.pos
    stop_at = total_steps if max_steps is None else min(total_steps, max_steps)
    reporter = _Reporter(out_dir, ctx.is_main, pos.global_step)
    fwd_extra = forward_kwargs or (lambda epoch_float: {})
    distributed = ctx.world > 1 and rdist.is_distributed()
    t_start = time.perf_counter()
    clips_total = 0
    window = _Window()

    with _stage_run(stage, params, ctx.is_main, out_dir), _StopSignals() as stop:
        run.net.train()
        bar = tqdm(
            total=stop_at, initial=pos.global_step, desc=stage, unit="step", disable=not ctx.is_main, dynamic_ncols=True
        )
        while pos.global_step < stop_at:
            epoch = pos.epoch
            start_micro = pos.step_in_epoch * accum
            # The epoch's iterator is created from the epoch-start RNG states (see module doc).
            if run.epoch_rng is not None:
                restore_rng_state(run.epoch_rng)
            epoch_rng_now = capture_rng_state()
            batches = data.iterator(epoch, start_micro)
            if run.ckpt_rng is not None:
                restore_rng_state(run.ckpt_rng)
            run.ckpt_rng = run.epoch_rng = None
            micro_done = start_micro

            while pos.step_in_epoch < steps_per_epoch and pos.global_step < stop_at:
                n_micro = min(accum, micro_per_epoch - micro_done)
                kwargs = {**fwd_extra(pos.global_step / steps_per_epoch), "gather": distributed}
                if distributed and text_pad is not None:
                    # equal shapes on every rank by construction (fixed text length, equal
                    # batches): the losses' gathers need no shape exchange and host sync
                    kwargs["check_gather_shapes"] = False
                lr_used = optimizer.param_groups[0]["lr"]
                terms, clips, skipped, grad_norm, stop_signal = run.optimizer_step(
                    batches, n_micro, kwargs, text_pad, stop
                )
                micro_done += n_micro
                clips_total += clips
                window.add(terms | {"grad_norm": grad_norm}, clips, skipped)
                window.lr = lr_used
                bar.update(1)

                epoch_done = pos.step_in_epoch == steps_per_epoch
                if epoch_done:
                    pos.epoch, pos.step_in_epoch = epoch + 1, 0
                if pos.global_step % optim_cfg.log_every == 0 or epoch_done or pos.global_step == stop_at:
                    _log_window(window, run, reporter, bar)
                    window = _Window()
                if epoch_done:
                    run.validate(validation, epoch, reporter)
                if stop_signal:
                    path = run.save_step_checkpoint(epoch_rng_now)
                    raise TrainingInterrupted(stop_signal, pos.global_step, path)
                if pos.global_step % optim_cfg.checkpoint_every == 0 or pos.global_step == stop_at:
                    run.save_step_checkpoint(epoch_rng_now)
                if epoch_done:
                    break
        bar.close()
        wall = time.perf_counter() - t_start
        timings = {
            "measured_on": _machine(),
            "wall_time_s": wall,
            "clips": clips_total,
            "clips_per_s": clips_total / wall if wall > 0 else 0.0,
            "peak_memory_mb": _peak_memory_mb(ctx.device),
        }
        return run.finish(validation, extra_params or {}, timings, reporter)


def _log_window(window: _Window, run: _Run, reporter: _Reporter, bar: Any) -> None:
    """MLflow metrics and a loss.csv row for the steps since the last log point."""
    elapsed = max(1e-9, time.perf_counter() - window.t0)
    means = window.means()
    step = run.pos.global_step
    temp = float(getattr(run.model, "temperature", torch.tensor(float("nan"))).detach())
    metrics = {f"train/{k}": v for k, v in means.items()} | {
        "train/lr": window.lr,
        "train/temperature": temp,
        "train/clips_per_s": window.clips / elapsed,
        "train/peak_memory_mb": _peak_memory_mb(run.ctx.device),
        "train/skipped_clips": window.skipped,
        "train/epoch": step / run.steps_per_epoch,
    }
    loss_cols = {k: v for k, v in means.items() if k != "grad_norm"}
    reporter.log(metrics, step, step / run.steps_per_epoch, loss_cols, window.lr)
    bar.set_postfix(loss=f"{means.get('loss', float('nan')):.4f}", clips_s=f"{window.clips / elapsed:.1f}")
