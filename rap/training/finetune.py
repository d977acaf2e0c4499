"""``rap finetune TASK``: text-video retrieval fine-tuning (paper 5.3-5.4).

From a pre-trained checkpoint (weights only: optimiser and schedule start afresh), with
``finetune.optim`` (lr 1e-5, cosine, no warm-up at the paper scale), ``finetune.epochs[TASK]``
epochs, ``data.frames_train`` random frames per clip, and ``finetune.loss`` (ITC + RaCL + ITM;
captions of one video are positives of each other, never negatives, via ``video_index``).

Checkpoint selection (paper 5.4): "For each benchmark dataset, we select a checkpoint
according to the results of the validation split". After each epoch the model is evaluated
on the validation split (:func:`rap.evaluation.evaluate`, the test-time procedure) and the
epoch with the best mean text-to-video R@1/R@5/R@10 becomes ``<out>/checkpoint.pt``.
MSRVTT-7k validates on the 497 official-val videos (the release's protocol); MSRVTT-9k has no
validation split: the last epoch is taken, as the paper says.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from rap.checkpoint_io import file_digest, load_checkpoint, load_model_weights
from rap.config import ConfigError, LossConfig, Params, ScaleConfig, finetune_text_len
from rap.data.datasets import build_eval_set, build_finetune_loader
from rap.evaluation import evaluate
from rap.model import RaPModel, build_tokenizer
from rap.registry import FINETUNE, FINETUNE_TASKS
from rap.release.importer import QUEUE_STATE, adopt_checkpoint_pixels
from rap.training.loop import (
    LoaderEpochs,
    distill_alpha,
    distributed_session,
    run_dir_lock,
    seed_everything,
    train,
)

__all__ = ["selection_score", "RetrievalValidation", "load_pretrained", "run"]


def selection_score(metrics: dict[str, dict[str, float]]) -> float:
    """Mean of text-to-video R@1, R@5, R@10 (the released code evaluates t2v only)."""
    t2v = metrics["t2v"]
    return (t2v["R@1"] + t2v["R@5"] + t2v["R@10"]) / 3.0


class RetrievalValidation:
    """Evaluates the model on ``dataset``/``split`` (built once) for checkpoint selection."""

    def __init__(self, cfg: ScaleConfig, dataset: str, split: str, tokenizer, device: torch.device) -> None:
        self.cfg, self.tokenizer, self.device = cfg, tokenizer, device
        self.eval_set = build_eval_set(dataset, split, cfg)

    def __call__(self, model: nn.Module, epoch: int) -> tuple[float, dict[str, float]]:
        metrics = evaluate(
            model,
            self.tokenizer,
            self.eval_set,
            self.cfg.evaluate,
            self.device,
            max_len=self.cfg.model.text.max_len_eval,
            num_workers=self.cfg.data.num_workers,
        )
        flat = {f"{d}_{k}": float(v) for d in ("t2v", "v2t") for k, v in metrics[d].items()}
        return selection_score(metrics), flat


def _with_checkpoint_pixels(params: Params, checkpoint: Path) -> Params:
    """``params`` with the pixel statistics the pre-trained weights expect (an imported release
    checkpoint: CLIP's), so that training, validation and the written checkpoint all use them."""
    if not checkpoint.is_file():
        return params  # load_model_weights says so below
    model_cfg = adopt_checkpoint_pixels(params.cfg.model, load_checkpoint(checkpoint).get("params"))
    if model_cfg is params.cfg.model:
        return params
    return dataclasses.replace(params, cfg=dataclasses.replace(params.cfg, model=model_cfg))


def load_pretrained(model: RaPModel, checkpoint: Path, pretrain_loss: LossConfig) -> None:
    """The pre-trained weights into the fine-tuning ``model``. Momentum encoders come from the
    checkpoint when pre-training kept the same ones (``pretrain_loss.momentum``, the release
    recipe); else they start as copies of the loaded online towers with fresh queues. A
    missing online weight is an error (another model config)."""
    fresh_momentum = model.momentum is not None and not pretrain_loss.momentum
    loaded = load_model_weights(model, checkpoint, skip_prefixes=("momentum.",) if fresh_momentum else ())
    # an imported release checkpoint carries no queue: training state, started empty
    loaded["missing"] = [k for k in loaded["missing"] if k not in QUEUE_STATE]
    if fresh_momentum:
        model.momentum.reset_from(model)
        loaded["missing"] = [k for k in loaded["missing"] if not k.startswith("momentum.")]
    elif model.momentum is not None:  # a pre-training queue's ids name pre-training clips
        model.momentum.id_queue.fill_(-1)
    if loaded["missing"]:
        raise RuntimeError(
            f"{checkpoint}: {len(loaded['missing'])} weight(s) of the fine-tuning model are "
            f"missing (pre-trained with another model config?): {loaded['missing'][:5]}"
        )


def run(
    params: Params,
    task: str,
    checkpoint: Path,
    out_dir: Path,
    *,
    resume: bool | str = False,
    max_steps: int | None = None,
) -> Path:
    """Fine-tune the pre-trained ``checkpoint`` on ``task``; returns ``<out_dir>/checkpoint.pt``
    (the best validation epoch, or the last one for MSRVTT-9k)."""
    params = _with_checkpoint_pixels(params, Path(checkpoint))
    cfg = params.cfg
    ft = cfg.finetune
    if task not in FINETUNE:
        raise ConfigError(f"unknown fine-tuning task {task!r}; expected one of {FINETUNE_TASKS}")
    if task not in ft.epochs:
        raise ConfigError(f"finetune.epochs has no entry for task {task!r}")
    with distributed_session() as ctx, run_dir_lock(Path(out_dir), f"finetune-{task}", ctx, resume) as lock:
        seed_everything(params.seed, cfg.deterministic)
        model = RaPModel(cfg.model, ft.loss)
        load_pretrained(model, Path(checkpoint), cfg.pretrain.loss)
        seed_everything(params.seed + ctx.rank, cfg.deterministic)
        tokenizer = build_tokenizer(cfg.model.text)
        loader = build_finetune_loader(
            task, cfg, tokenizer, seed=params.seed, rank=ctx.rank, world_size=ctx.world, batch_size=ft.optim.batch_size
        )
        val_split = FINETUNE[task].val  # None: no validation split, the last epoch is kept
        validation = None
        if val_split is not None:  # every rank takes its share of the validation (rap.evaluation)
            validation = RetrievalValidation(cfg, FINETUNE[task].dataset, val_split, tokenizer, ctx.device)
        try:
            return train(
                model=model,
                data=LoaderEpochs(loader),
                stage=f"finetune-{task}",
                optim_cfg=ft.optim,
                epochs=ft.epochs[task],
                params=params,
                out_dir=Path(out_dir),
                ctx=ctx,
                resume=resume,
                max_steps=max_steps,
                lock=lock,
                validation=validation,
                forward_kwargs=lambda epoch: {"phase": "finetune", "alpha": distill_alpha(ft.loss, epoch)},
                text_pad=(finetune_text_len(cfg, task), tokenizer.pad_token_id),
                extra_params={"task": task, "init_checkpoint": str(checkpoint), "validation_split": val_split},
                inputs={"init_checkpoint.sha256": file_digest(Path(checkpoint))},
            )
        finally:
            loader.close()  # its persistent workers end with the run
