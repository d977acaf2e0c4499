"""``rap pretrain``: RaP pre-training on the WebVid + CC3M mix (paper 5.2, 5.4).

The objective is eq. (10), L = L_others + lambda * L_RaCL, assembled by the model; this script
only wires config -> model, tokenizer, loader -> the shared loop (:mod:`rap.training.loop`).
Run it as one process or under ``torchrun``; every rank builds the same model (same seed) and
reads its own shard of each global batch.
"""

from __future__ import annotations

from pathlib import Path

from rap.config import Params
from rap.data.datasets import build_pretrain_loader
from rap.model import RaPModel, build_tokenizer
from rap.training.loop import (
    LoaderEpochs,
    distill_alpha,
    distributed_session,
    run_dir_lock,
    seed_everything,
    train,
)

__all__ = ["run"]


def run(params: Params, out_dir: Path, *, resume: bool | str = False, max_steps: int | None = None) -> Path:
    """Pre-train and return the final checkpoint ``<out_dir>/checkpoint.pt``.

    ``resume`` continues from the newest ``<out_dir>/checkpoints/step-*.pt``; ``max_steps``
    stops after that many optimiser steps (the schedule still spans all epochs).
    """
    cfg = params.cfg
    pre = cfg.pretrain
    with distributed_session() as ctx, run_dir_lock(Path(out_dir), "pretrain", ctx, resume) as lock:
        seed_everything(params.seed, cfg.deterministic)  # identical initial weights on every rank
        model = RaPModel(cfg.model, pre.loss)
        seed_everything(
            params.seed + ctx.rank, cfg.deterministic
        )  # per-rank streams (dropout, MAC masks, ITM negatives)
        tokenizer = build_tokenizer(cfg.model.text)
        loader = build_pretrain_loader(
            cfg, tokenizer, seed=params.seed, rank=ctx.rank, world_size=ctx.world, batch_size=pre.optim.batch_size
        )
        try:
            return train(
                model=model,
                data=LoaderEpochs(loader),
                stage="pretrain",
                optim_cfg=pre.optim,
                epochs=pre.optim.epochs,
                params=params,
                out_dir=Path(out_dir),
                ctx=ctx,
                resume=resume,
                max_steps=max_steps,
                lock=lock,
                forward_kwargs=lambda epoch: {"phase": "pretrain", "alpha": distill_alpha(pre.loss, epoch)},
                text_pad=(cfg.model.text.max_len_train, tokenizer.pad_token_id),
                extra_params={"global_batch": pre.optim.batch_size * pre.optim.grad_accum * ctx.world},
            )
        finally:
            loader.close()  # its persistent workers end with the run
