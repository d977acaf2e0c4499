"""Two-process DDP training (torchrun, gloo, CPU) equals one process on the same global batch.

The 2-rank run is the real ``rap pretrain`` code path under ``torchrun --nproc_per_node=2``:
each rank reads its shard of every global batch (``MixedBatchSampler`` shards
``rank::world``), the contrastive losses take candidates from both ranks (``gather=True``)
and DDP averages gradients. The reference is one process running the same loop
(:func:`rap.training.loop.train`) on the concatenation [rank 0 batch; rank 1 batch] of the very
same loader outputs, i.e. the union of the two ranks' batches with their augmentations.

Switched off, because they are per-rank by design or draw per-rank randomness:
* dropout (each rank draws its own masks; ``model.{vision,text}.dropout: 0`` in both runs);
* ITM (its hard negatives come from the rank's own batch, as in BLIP) and LM (a token mean
  per rank: the mean of two means is not the mean over all tokens).
ITC, both RaCL directions and both intra-modal terms stay on. Parameters are compared after
3 optimiser steps at atol 1e-5 (float summation order differs between the two runs).

The same 2-rank run with ``optim.grad_comm: bf16`` (torch's ``bf16_compress_hook``) logs the
same losses within 0.1 % and moves the weights by at most 1e-3 from the fp32 all-reduce's.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rap.checkpoint_io import load_checkpoint
from rap.data.datasets import build_pretrain_loader
from rap.model import RaPModel, build_tokenizer
from rap.training.loop import DistContext, seed_everything, train

from helpers.config import NO_DROPOUT, REPO, shrunk_overrides, torch_threads

STEPS = 3
PER_RANK = 4
# bf16 gradient all-reduce against fp32: 8 mantissa bits on the averaged gradients
BF16_LOSS_REL = 1e-3
BF16_WEIGHTS_ATOL = 1e-3


class UnionOfRanks:
    """The one-process reference data: rank 0's and rank 1's micro-batches, concatenated."""

    def __init__(self, loaders, pad_id: int) -> None:
        self.loaders, self.pad_id = loaders, pad_id

    def __len__(self) -> int:
        return self.loaders[0].steps_per_epoch

    def iterator(self, epoch: int, start: int):
        for loader in self.loaders:
            loader.set_position(epoch, start)
        for parts in zip(*self.loaders):
            length = max(p["input_ids"].shape[1] for p in parts)
            pad = lambda x, v: torch.nn.functional.pad(x, (0, length - x.shape[1]), value=v)  # noqa: E731
            yield {
                "video": torch.cat([p["video"] for p in parts]),
                "video_aug": torch.cat([p["video_aug"] for p in parts]),
                "input_ids": torch.cat([pad(p["input_ids"], self.pad_id) for p in parts]),
                "attention_mask": torch.cat([pad(p["attention_mask"], 0) for p in parts]),
                "video_index": torch.cat([p["video_index"] for p in parts]),
            }


def test_two_rank_ddp_equals_one_process_on_the_union_batch(make_params, corpus_root, tmp_path):
    overrides = {
        **NO_DROPOUT,
        "pretrain.loss.itm_weight": 0.0,
        "pretrain.loss.lm_weight": 0.0,
        "pretrain.optim.batch_size": PER_RANK,
        "pretrain.optim.epochs": 1,
    }
    params = make_params(overrides)

    out = tmp_path / "ddp"
    _run_two_ranks(corpus_root, overrides, out)
    ddp = load_checkpoint(out / "checkpoint.pt")
    assert ddp["step"] == STEPS
    assert json.loads((out / "train_run.json").read_text())["world_size"] == 2
    assert json.loads((out / "train_timings.json").read_text())["clips"] == STEPS * 2 * PER_RANK

    cfg = params.cfg
    with torch_threads(1):
        seed_everything(params.seed)
        model = RaPModel(cfg.model, cfg.pretrain.loss)
        tokenizer = build_tokenizer(cfg.model.text)
        loaders = [
            build_pretrain_loader(cfg, tokenizer, seed=params.seed, rank=r, world_size=2, batch_size=PER_RANK)
            for r in range(2)
        ]
        ref_out = tmp_path / "one"
        train(
            model=model,
            data=UnionOfRanks(loaders, tokenizer.pad_token_id),
            stage="pretrain",
            optim_cfg=cfg.pretrain.optim,
            epochs=1,
            params=params,
            out_dir=ref_out,
            ctx=DistContext(0, 1, 0, torch.device("cpu")),
            max_steps=STEPS,
            forward_kwargs=lambda epoch: {"phase": "pretrain", "alpha": 0.0},
        )
    ref = load_checkpoint(ref_out / "checkpoint.pt")["model"]

    start = RaPModel(cfg.model, cfg.pretrain.loss).state_dict()  # any init: the runs must have moved
    moved = max((ref[k] - start[k]).abs().max().item() for k in ref if ref[k].is_floating_point())
    assert moved > 1e-4
    worst = max(((ddp["model"][k] - ref[k]).abs().max().item(), k) for k in ref if ref[k].is_floating_point())
    assert worst[0] <= 1e-5, f"DDP and one-process weights differ by {worst[0]:.2e} at {worst[1]}"
    print(f"largest |DDP - one process| after {STEPS} steps: {worst[0]:.2e} ({worst[1]})")
    # rank 0 logs the loss averaged over ranks = the one-process loss on the union batch
    assert _column(out / "loss.csv", "loss") == pytest.approx(_column(ref_out / "loss.csv", "loss"), rel=1e-5)

    # optim.grad_comm: bf16 (torch's bf16_compress_hook on gloo): the same 2-rank run with the
    # gradient buckets all-reduced in bf16 (half the bytes: benchmarks/bench_step.py measures them)
    bf16_out = tmp_path / "ddp-bf16"
    _run_two_ranks(corpus_root, {**overrides, "pretrain.optim.grad_comm": "bf16"}, bf16_out)
    fp32_loss, bf16_loss = _column(out / "loss.csv", "loss"), _column(bf16_out / "loss.csv", "loss")
    assert bf16_loss[0] == fp32_loss[0]  # the first step's loss comes before any gradient exchange
    assert bf16_loss == pytest.approx(fp32_loss, rel=BF16_LOSS_REL)
    bf16 = load_checkpoint(bf16_out / "checkpoint.pt")["model"]
    apart = max((bf16[k] - ddp["model"][k]).abs().max().item() for k in ref if ref[k].is_floating_point())
    assert 0 < apart <= BF16_WEIGHTS_ATOL, apart  # rounded gradients moved the weights, a little
    print(f"bf16 gradient all-reduce: losses {bf16_loss} vs {fp32_loss}, weights apart by {apart:.2e}")


def _run_two_ranks(corpus_root: Path, overrides: dict, out: Path) -> None:
    """The real pre-training under ``torchrun --standalone --nproc_per_node=2`` (gloo)."""
    env = {
        **os.environ,
        "RAP_TRACKING": "0",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(REPO / "tests" / "ddp_train_worker.py"),
        json.dumps({**shrunk_overrides(corpus_root), **overrides}),
        str(out),
        str(STEPS),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def _column(path: Path, name: str) -> list[float]:
    with path.open(newline="") as f:
        return [float(r[name]) for r in csv.DictReader(f)]
