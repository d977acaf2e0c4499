"""AdamW parameter groups and the learning-rate schedule of paper 5.4.

Paper 5.4: "AdamW is adopted as the optimizer with a weight [decay] of 0.05 ... The learning
rate is initialized as 1e-6 and warmed to 3e-4 after 3,000 training iterations." The released
code then decays it per epoch, ``lr * 0.9**epoch`` (``schedule: step``); fine-tuning uses a
cosine decay (``schedule: cosine``).

Unlike the release, weight decay is *not* applied to normalisation weights, biases or the
learnable temperature (decaying tau towards 0 would sharpen every softmax over time).
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from rap.config import OptimConfig

__all__ = ["param_groups", "build_optimizer", "LrSchedule", "build_scheduler"]


def param_groups(model: nn.Module, weight_decay: float, no_decay_names: Iterable[str] = ()) -> list[dict]:
    """Two AdamW groups: decayed matrices, and the rest.

    A parameter skips weight decay when its name is in ``no_decay_names`` (the model's
    ``no_weight_decay_names()``: temperature, position embeddings, ...) or when it has
    ``ndim <= 1`` (biases, LayerNorm/BatchNorm scales and shifts, scalar tau).
    Frozen parameters (``requires_grad=False``) are left out.
    """
    skip = set(no_decay_names)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "group": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "group": "no_decay"},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW (paper 5.4) over :func:`param_groups`; ``fused`` kernels on CUDA."""
    names = model.no_weight_decay_names() if hasattr(model, "no_weight_decay_names") else ()
    groups = param_groups(model, cfg.weight_decay, names)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, fused=on_cuda or None)


class LrSchedule:
    """Learning rate as a pure function of the optimiser step (0-based).

    * warm-up, ``step < warmup_steps``: linear from ``warmup_lr`` to ``lr``;
    * ``step``: ``max(min_lr, lr * decay_rate**epoch)`` with ``epoch = step // steps_per_epoch``
      (the released code's per-epoch decay);
    * ``cosine``: ``min_lr + (lr - min_lr) * (1 + cos(pi * t)) / 2`` with ``t`` the fraction
      of post-warm-up steps done, reaching ``min_lr`` at ``total_steps``.

    Being a pure function, the schedule's only state is the step count, which the scheduler
    (a ``LambdaLR``) saves and restores.
    """

    def __init__(self, cfg: OptimConfig, steps_per_epoch: int, total_steps: int) -> None:
        if steps_per_epoch < 1 or total_steps < 1:
            raise ValueError(
                f"schedule needs steps_per_epoch >= 1 and total_steps >= 1, "
                f"got {steps_per_epoch} and {total_steps} (is the training set empty?)"
            )
        self.cfg = cfg
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = total_steps

    def lr_at(self, step: int) -> float:
        c = self.cfg
        if step < c.warmup_steps:
            return c.warmup_lr + (c.lr - c.warmup_lr) * step / c.warmup_steps
        if c.schedule == "step":
            return max(c.min_lr, c.lr * c.decay_rate ** (step // self.steps_per_epoch))
        span = max(1, self.total_steps - c.warmup_steps)
        t = min(1.0, (step - c.warmup_steps) / span)
        return c.min_lr + (c.lr - c.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))

    def factor(self, step: int) -> float:
        """Multiplier on the groups' base lr (``cfg.lr``), what ``LambdaLR`` expects."""
        return self.lr_at(step) / self.cfg.lr


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` stepping once per optimiser step; ``state_dict()`` carries the step count."""
    schedule = LrSchedule(cfg, steps_per_epoch, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.factor)
