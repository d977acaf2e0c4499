"""The training loop shared by pre-training and fine-tuning (paper 5.4).

One code path for a CPU process, one GPU, ``torchrun --nproc_per_node=G`` and multi-node
``torchrun``: the model is wrapped in DDP when the world has more than one rank, and the
contrastive losses see the global batch (``gather=True``), as the paper's 64-GPU
pre-training does.

Per optimiser step: ``grad_accum`` micro-batches (DDP ``no_sync`` on all but the last), autocast
(bf16/fp16) around the forward pass, a collective non-finite check of every loss term before
backward, gradient clipping, AdamW, the lr schedule, and the temperature clamp (tau in
[temp_min, temp_max], paper 3.2 / released code).

Exact resume: a checkpoint carries model, optimiser, scheduler, scaler, every rank's RNG states
*and* the RNG states at the start of the current epoch. Resuming at (epoch e, micro-batch s)
restores the epoch-start states, re-creates the epoch's data iterator at micro-batch ``s``
(so whatever the loader draws from the global RNG - a sampler order, DataLoader worker seeds -
is what the uninterrupted run drew), then restores the checkpoint's states. The project's
:class:`rap.data.datasets.TrainLoader` is a pure function of (seed, epoch, step, rank) and
jumps to ``s`` directly; a plain DataLoader is re-read up to ``s``. The run then ends with
bit-identical weights on the CPU (tests/test_resume.py; single-threaded kernels, since some
multi-threaded CPU reductions are not bit-reproducible run to run).
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import logging
import math
import random
import resource
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from rap import distributed as rdist
from rap.config import LossConfig, OptimConfig, Params
from rap.training.determinism import seed_everything  # re-exported: pretrain/finetune import it here
from rap.training.checkpoint import (atomic_save, capture_rng_state, code_fingerprint, latest_checkpoint,
                                     load_checkpoint, resumable_checkpoint,
                                     prune_checkpoints, restore_rng_state, step_checkpoint_path)
from rap.training.optim import build_optimizer, build_scheduler

__all__ = [
    "NonFiniteLossError",
    "distributed_session",
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


class NonFiniteLossError(FloatingPointError):
    """A loss term (or the gradient norm) became NaN/inf; the message names step and term(s)."""


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
    must draw whatever it draws from the global RNG (sampler order, worker seeds) *when it
    is called*: the loop calls it at a controlled moment (see the module docstring)."""

    def __len__(self) -> int: ...

    def iterator(self, epoch: int, start: int) -> Iterator[Mapping[str, Any]]: ...


class LoaderEpochs:
    """:class:`EpochData` over a loader.

    The loader (:class:`rap.data.datasets.TrainLoader`, whose batches are a pure function of
    seed, epoch, step and rank) jumps straight to ``start`` with ``set_position``. The first
    batch is fetched eagerly so that a lazily created ``DataLoader`` iterator draws its worker
    base seed inside the call.
    """

    def __init__(self, loader: Iterable[Mapping[str, Any]]) -> None:
        self.loader = loader

    def __len__(self) -> int:
        steps = getattr(self.loader, "steps_per_epoch", None)
        return int(steps) if steps is not None else len(self.loader)  # type: ignore[arg-type]

    def iterator(self, epoch: int, start: int) -> Iterator[Mapping[str, Any]]:
        self.loader.set_position(epoch, start)  # seeks: no batch before `start` is decoded
        it = iter(self.loader)
        first = next(it, None)
        return iter(()) if first is None else itertools.chain([first], it)


class Validation(Protocol):
    """Called on rank 0 after each epoch with the unwrapped model in eval mode; returns the
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
    try:
        yield DistContext(rank, world, local_rank, device)
    finally:
        if not existed:
            rdist.cleanup()


def distill_alpha(loss: LossConfig, epoch_float: float) -> float:
    """Momentum-distillation weight, ramped linearly from 0 to ``loss.distill_alpha`` over the
    first ``loss.distill_ramp_epochs`` epochs (released code, BLIP); 0 without momentum."""
    if not loss.momentum:
        return 0.0
    if loss.distill_ramp_epochs <= 0:
        return loss.distill_alpha
    return loss.distill_alpha * min(1.0, epoch_float / loss.distill_ramp_epochs)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on a CUDA device that supports it, else fp32 (fp16 is never picked
    automatically: it needs loss scaling). Explicit ``fp16``/``bf16`` are honoured anywhere
    autocast supports them."""
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


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


def _gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    if ctx.world == 1 or not rdist.is_distributed():
        return [obj]
    out: list[Any] = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


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
            from rap import tracking

            tracking.log_metrics(metrics, step)

    def log(self, metrics: dict[str, float], step: int, epoch: float, loss_terms: dict[str, float],
            lr: float) -> None:
        """MLflow metrics and one ``loss.csv`` row (step, epoch, each loss term, lr)."""
        if not self.active:
            return
        self.metrics(metrics, step)
        if self.columns is None or not self.csv_path.exists():
            self.columns = ["step", "epoch", *loss_terms.keys(), "lr"]
            with self.csv_path.open("w", newline="") as f:
                csv.writer(f).writerow(self.columns)
        row = {"step": step, "epoch": f"{epoch:.4f}", "lr": f"{lr:.6g}",
               **{k: f"{v:.6f}" for k, v in loss_terms.items()}}
        with self.csv_path.open("a", newline="") as f:
            csv.writer(f).writerow([row.get(c, "") for c in self.columns])


def _stage_run(stage: str, params: Params, active: bool) -> contextlib.AbstractContextManager:
    if not active:
        return contextlib.nullcontext()
    from rap import tracking

    return tracking.stage_run(stage, params)


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
    terms.update({k: v for k, v in out.items()
                  if k != "loss" and isinstance(v, torch.Tensor) and v.ndim == 0})
    return terms


def _check_finite(terms: dict[str, torch.Tensor], ctx: DistContext, step: int, epoch: int) -> dict[str, float]:
    """Mean of every term over ranks; raises :class:`NonFiniteLossError` on *every* rank if any
    rank has a NaN/inf term (a collective, so no rank is left waiting in the next all-reduce)."""
    values = torch.stack([t.detach().float() for t in terms.values()])
    local_bad = ~torch.isfinite(values)
    flags = local_bad.float()
    if ctx.world > 1 and rdist.is_distributed():
        both = torch.cat([torch.where(local_bad, torch.zeros_like(values), values), flags])
        dist.all_reduce(both, op=dist.ReduceOp.SUM)
        values_sum, flags = both[: len(terms)], both[len(terms):]
        values = values_sum / ctx.world
    bad = [name for name, f in zip(terms, flags.tolist()) if f > 0]
    if bad:
        shown = ", ".join(f"{name}={terms[name].item()}" for name in bad)
        raise NonFiniteLossError(f"non-finite loss at optimiser step {step + 1} (epoch {epoch}): "
                                 f"term(s) {bad} not finite on at least one rank (this rank: {shown})")
    return dict(zip(terms, values.tolist()))


def train(*, model: nn.Module, data: EpochData, stage: str, optim_cfg: OptimConfig, epochs: int,
          params: Params, out_dir: Path, ctx: DistContext, resume: bool | str = False,
          max_steps: int | None = None, forward_kwargs: Callable[[float], dict[str, Any]] | None = None,
          validation: Validation | None = None, extra_params: Mapping[str, Any] | None = None,
          text_pad: tuple[int, int] | None = None) -> Path:
    """Train ``model`` for ``epochs`` epochs of ``data``; returns ``<out_dir>/checkpoint.pt``.

    ``forward_kwargs(epoch_float)`` gives per-step keyword arguments of ``model.forward``
    besides ``gather`` (the distillation ``alpha`` ramp, the stage). With ``validation`` the
    final checkpoint holds the best-scoring epoch's weights (``best.pt``), otherwise the last.
    ``max_steps`` stops after that many optimiser steps in total (a checkpoint is written), so
    a later ``resume=True`` run continues exactly where this one stopped. ``text_pad`` =
    ``(length, pad_id)``: under DDP every rank's text is padded to ``length`` (equal shapes
    for the all-gathers of the losses).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = ctx.device
    micro_per_epoch = len(data)
    if micro_per_epoch < 1:
        raise ValueError(f"{stage}: the training data yields no batch (batch_size={optim_cfg.batch_size} "
                         f"per rank x {ctx.world} rank(s) larger than the training set?)")
    accum = optim_cfg.grad_accum
    steps_per_epoch = math.ceil(micro_per_epoch / accum)  # the last step of an epoch may hold fewer
    total_steps = steps_per_epoch * epochs

    model.to(device)
    if optim_cfg.grad_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise ValueError(f"optim.grad_checkpointing is on but {type(model).__name__} has no "
                             f"set_grad_checkpointing()")
        model.set_grad_checkpointing(True)
    optimizer = build_optimizer(model, optim_cfg)
    scheduler = build_scheduler(optimizer, optim_cfg, steps_per_epoch, total_steps)
    amp_dtype = resolve_precision(optim_cfg.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    distributed = ctx.world > 1 and rdist.is_distributed()
    # find_unused_parameters: heads switched off by a zero loss weight get no gradient.
    net: nn.Module = (DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                              find_unused_parameters=True) if distributed else model)

    pos = _Position()
    extra: dict[str, Any] = {"best_score": None, "best_epoch": None, "val_history": []}
    ckpt_rng: dict | None = None
    epoch_rng: dict | None = None
    resumed_from: Path | None = None
    code = code_fingerprint()
    if resume == "auto":  # every rank reads the same out_dir (a shared filesystem, as for resume)
        resume = resumable_checkpoint(out_dir, stage, params.to_flat_dict()) is not None
    if resume:
        resumed_from = latest_checkpoint(out_dir)
        if resumed_from is None:
            log.warning("%s: resume requested but %s has no checkpoints/step-*.pt: starting fresh", stage, out_dir)
        else:
            ckpt = load_checkpoint(resumed_from)  # on the CPU: RNG states must stay CPU tensors
            if ckpt.get("stage") != stage:
                raise ValueError(f"{resumed_from} is a {ckpt.get('stage')!r} checkpoint, not {stage!r}")
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            scaler.load_state_dict(ckpt["scaler"])
            pos = _Position(**ckpt["position"])
            if pos.step_in_epoch >= steps_per_epoch:
                raise ValueError(f"{resumed_from}: position {ckpt['position']} does not fit {steps_per_epoch} "
                                 f"steps per epoch (batch size, grad_accum or world size changed?)")
            extra.update(ckpt.get("extra", {}))
            if len(ckpt["rng"]) == ctx.world:
                ckpt_rng, epoch_rng = ckpt["rng"][ctx.rank], ckpt["epoch_rng"][ctx.rank]
            else:
                log.warning("%s was written by %d rank(s), this run has %d: RNG streams start afresh",
                            resumed_from, len(ckpt["rng"]), ctx.world)
            log.info("%s: resumed from %s at epoch %d, step %d", stage, resumed_from, pos.epoch, pos.global_step)
    elif ctx.is_main:
        # A fresh run must not later resume from, keep, or select an earlier run's files.
        (out_dir / "best.pt").unlink(missing_ok=True)
        stale = prune_checkpoints(out_dir, keep=0)
        if stale:
            log.warning("%s: fresh run in %s: removed %d step checkpoint(s) of an earlier run", stage, out_dir,
                        len(stale))
    rdist.barrier()
    stop_at = total_steps if max_steps is None else min(total_steps, max_steps)

    reporter = _Reporter(out_dir, ctx.is_main, pos.global_step)
    fwd_extra = forward_kwargs or (lambda epoch_float: {})
    unwrapped = model
    t_start = time.perf_counter()
    clips_total = 0
    skipped_total = 0
    last_terms: dict[str, float] = {}
    window = _Window()
    flops_per_step: int | None = None

    def save_step_checkpoint(epoch_rng_now: dict) -> None:
        rngs = _gather_objects(capture_rng_state(), ctx)
        epoch_rngs = _gather_objects(epoch_rng_now, ctx)
        if ctx.is_main:
            state = {"stage": stage, "model": unwrapped.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rngs,
                     "epoch_rng": epoch_rngs, "position": vars(pos).copy(), "extra": dict(extra),
                     "params": params.to_flat_dict(), "code": code}
            atomic_save(state, step_checkpoint_path(out_dir, pos.global_step))
            prune_checkpoints(out_dir, KEEP_STEP_CHECKPOINTS)
        rdist.barrier()

    def run_validation(epoch: int) -> None:
        if validation is None:
            return
        if ctx.is_main:
            unwrapped.eval()
            with torch.no_grad():
                score, metrics = validation(unwrapped, epoch)
            unwrapped.train()
            reporter.metrics({f"val/{k}": v for k, v in metrics.items()} | {"val/score": score}, pos.global_step)
            log.info("%s epoch %d validation score %.3f %s", stage, epoch, score, metrics)
            extra["val_history"] = [*extra["val_history"], {"epoch": epoch, "score": score, **metrics}]
            if extra["best_score"] is None or score > extra["best_score"]:
                extra["best_score"], extra["best_epoch"] = score, epoch
                atomic_save({"stage": stage, "model": unwrapped.state_dict(), "params": params.to_flat_dict(),
                             "step": pos.global_step, "epoch": epoch, "score": score, "metrics": metrics},
                            out_dir / "best.pt")
        rdist.barrier()

    with _stage_run(stage, params, ctx.is_main):
        net.train()
        bar = tqdm(total=stop_at, initial=pos.global_step, desc=stage, unit="step", disable=not ctx.is_main,
                   dynamic_ncols=True)
        while pos.global_step < stop_at:
            epoch = pos.epoch
            start_micro = pos.step_in_epoch * accum
            # The epoch's iterator is created from the epoch-start RNG states (see module doc).
            if epoch_rng is not None:
                restore_rng_state(epoch_rng)
            epoch_rng_now = capture_rng_state()
            batches = data.iterator(epoch, start_micro)
            if ckpt_rng is not None:
                restore_rng_state(ckpt_rng)
            ckpt_rng = epoch_rng = None
            micro_done = start_micro

            while pos.step_in_epoch < steps_per_epoch and pos.global_step < stop_at:
                n_micro = min(accum, micro_per_epoch - micro_done)
                epoch_float = pos.global_step / steps_per_epoch
                kwargs = {**fwd_extra(epoch_float), "gather": distributed}
                step_clips = 0
                step_skipped = 0
                step_terms: dict[str, float] = {}
                # FLOPs of one optimiser step (forward + backward, this rank), counted on the
                # first step only: FlopCounterMode observes the real step, it adds no compute.
                counting = flops_per_step is None
                with FlopCounterMode(display=False) if counting else contextlib.nullcontext() as counter:
                    for i in range(n_micro):
                        batch = _to_device(next(batches), device)
                        if distributed and text_pad is not None:
                            batch = _pad_text(batch, *text_pad)
                        micro_done += 1
                        step_clips += _batch_size(batch) * ctx.world
                        step_skipped += int(batch.get("n_skipped", 0))  # unusable clips replaced by the loader
                        sync = i == n_micro - 1
                        with (net.no_sync() if distributed and not sync else contextlib.nullcontext()):
                            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32):
                                out = net(batch, **kwargs)
                            terms = _loss_terms(out)
                            values = _check_finite(terms, ctx, pos.global_step, epoch)
                            for k, v in values.items():
                                step_terms[k] = step_terms.get(k, 0.0) + v / n_micro
                            scaler.scale(terms["loss"] / n_micro).backward()
                if counting:
                    flops_per_step = counter.get_total_flops()
                scaler.unscale_(optimizer)
                params_with_grad = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
                max_norm = optim_cfg.clip_grad if optim_cfg.clip_grad > 0 else float("inf")
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params_with_grad, max_norm))
                if not math.isfinite(grad_norm) and not scaler.is_enabled():
                    raise NonFiniteLossError(f"non-finite gradient norm at optimiser step {pos.global_step + 1} "
                                             f"(epoch {epoch}): grad-norm={grad_norm}; loss terms {step_terms}")
                lr_used = optimizer.param_groups[0]["lr"]
                scaler.step(optimizer)  # skipped by the scaler when fp16 gradients overflowed
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                with warnings.catch_warnings():
                    # fp16: the scaler skips steps whose gradients overflowed (the first ones,
                    # while it calibrates); the schedule still advances, one entry per step.
                    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
                    scheduler.step()
                if hasattr(unwrapped, "clamp_temperature"):
                    unwrapped.clamp_temperature()
                pos.global_step += 1
                pos.step_in_epoch += 1
                clips_total += step_clips
                skipped_total += step_skipped
                window.add(step_terms | {"grad_norm": grad_norm}, step_clips, step_skipped)
                window.lr = lr_used
                last_terms = step_terms
                bar.update(1)

                epoch_done = pos.step_in_epoch == steps_per_epoch
                if epoch_done:
                    pos.epoch, pos.step_in_epoch = epoch + 1, 0
                if pos.global_step % optim_cfg.log_every == 0 or epoch_done or pos.global_step == stop_at:
                    elapsed = max(1e-9, time.perf_counter() - window.t0)
                    means = window.means()
                    lr = window.lr
                    temp = float(getattr(unwrapped, "temperature", torch.tensor(float("nan"))).detach())
                    metrics = {f"train/{k}": v for k, v in means.items()} | {
                        "train/lr": lr, "train/temperature": temp, "train/clips_per_s": window.clips / elapsed,
                        "train/peak_memory_mb": _peak_memory_mb(device), "train/skipped_clips": window.skipped,
                        "train/epoch": pos.global_step / steps_per_epoch}
                    loss_cols = {k: v for k, v in means.items() if k != "grad_norm"}
                    reporter.log(metrics, pos.global_step, pos.global_step / steps_per_epoch, loss_cols, lr)
                    bar.set_postfix(loss=f"{means.get('loss', float('nan')):.4f}",
                                    clips_s=f"{window.clips / elapsed:.1f}")
                    window = _Window()
                if epoch_done:
                    run_validation(epoch)
                if pos.global_step % optim_cfg.checkpoint_every == 0 or pos.global_step == stop_at:
                    save_step_checkpoint(epoch_rng_now)
                if epoch_done:
                    break
        bar.close()

        wall = time.perf_counter() - t_start
        final = out_dir / "checkpoint.pt"
        finished = pos.global_step >= total_steps
        if ctx.is_main:
            if validation is not None and (out_dir / "best.pt").exists():
                state = load_checkpoint(out_dir / "best.pt")
            else:
                state = {"stage": stage, "model": unwrapped.state_dict(), "params": params.to_flat_dict(),
                         "step": pos.global_step}
            state["finished"] = finished
            atomic_save(state, final)
            summary = {"stage": stage, **dict(extra_params or {}), "steps": pos.global_step,
                       "total_steps": total_steps, "finished": finished, "epochs": pos.global_step / steps_per_epoch,
                       "world_size": ctx.world, "wall_time_s": wall,
                       "clips_per_s": clips_total / wall if wall > 0 else 0.0, "clips": clips_total,
                       "skipped_clips": skipped_total, "peak_memory_mb": _peak_memory_mb(device),
                       "flops_per_step": flops_per_step,
                       "precision": str(amp_dtype).replace("torch.", ""), "final_loss_terms": last_terms,
                       "best_score": extra["best_score"], "best_epoch": extra["best_epoch"],
                       "validation": extra["val_history"],
                       "resumed_from": str(resumed_from) if resumed_from else None, "checkpoint": str(final)}
            (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            reporter.metrics({"summary/clips_per_s": summary["clips_per_s"], "summary/wall_time_s": wall,
                              "summary/steps": pos.global_step}, pos.global_step)
        rdist.barrier()
    return final
