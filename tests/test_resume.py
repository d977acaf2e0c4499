"""Exact resume: an interrupted pre-training run, resumed, ends with the SAME weights (torch.equal)
as an uninterrupted one - across an epoch boundary, with gradient accumulation, after a clean
stop (max_steps) and after a crash (an exception mid-run, resumed from the last periodic
checkpoint). Everything random (dropout, ITM negatives, augmentation, source mix) is on.

CPU kernels are run single-threaded: some multi-threaded reductions are not bit-reproducible
run to run, which would hide what this test checks."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from rap.model import RaPModel
from rap.training import pretrain
from rap.training.checkpoint import load_checkpoint

# 5 micro-batches per epoch, grad_accum 2 -> 3 optimiser steps per epoch (2 + 2 + 1), 2 epochs.
OVERRIDES = {"pretrain.optim.epochs": 2, "pretrain.optim.grad_accum": 2, "pretrain.optim.checkpoint_every": 2}
TOTAL_STEPS = 6


def _weights(path):
    return load_checkpoint(path)["model"]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ after resume, e.g. {different[:3]}"


def _losses(out):
    with (out / "loss.csv").open(newline="") as f:
        return [(r["step"], r["loss"]) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def straight(make_params, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAP_TRACKING", "0")
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            final = pretrain.run(make_params(OVERRIDES), out)
        finally:
            torch.set_num_threads(before)
    return out, _weights(final)


def test_resume_after_stop_equals_uninterrupted_run(make_params, straight, tmp_path, no_tracking, single_thread):
    params = make_params(OVERRIDES)
    out = tmp_path / "stopped"
    pretrain.run(params, out, max_steps=2)  # stops inside epoch 0 (step 2 of 3)
    assert load_checkpoint(out / "checkpoints" / "step-00000002.pt")["position"] == \
        {"epoch": 0, "step_in_epoch": 2, "global_step": 2}
    final = pretrain.run(params, out, resume=True)
    _assert_same(_weights(final), straight[1])
    assert _losses(out) == _losses(straight[0])  # the logged curve is identical too


def test_resume_after_crash_equals_uninterrupted_run(make_params, straight, tmp_path, monkeypatch, no_tracking,
                                                      single_thread):
    params = make_params(OVERRIDES)
    out = tmp_path / "crashed"
    forward, calls = RaPModel.forward, {"n": 0}

    def crash_in_step_6(self, batch, **kw):
        calls["n"] += 1
        if calls["n"] == 10:  # micro-batch 10 = the last step's (2 micro-batches per step)
            raise RuntimeError("simulated kill")
        return forward(self, batch, **kw)

    with monkeypatch.context() as mp:
        mp.setattr(RaPModel, "forward", crash_in_step_6)
        with pytest.raises(RuntimeError, match="simulated kill"):
            pretrain.run(params, out)
    assert not (out / "checkpoint.pt").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002.pt", "step-00000004.pt"]
    final = pretrain.run(params, out, resume="auto")  # the CLI default: from step 4 = epoch 1, step 1
    _assert_same(_weights(final), straight[1])
    assert load_checkpoint(final)["step"] == TOTAL_STEPS
    assert json.loads((out / "train_summary.json").read_text())["resumed_from"].endswith("step-00000004.pt")


def test_auto_resume_ignores_checkpoints_of_other_parameters(make_params, tmp_path, no_tracking):
    """`--resume auto` (what dvc repro runs) never continues a run of another configuration."""
    out = tmp_path / "changed"
    pretrain.run(make_params(OVERRIDES), out, max_steps=2)
    changed = make_params({**OVERRIDES, "lambda": 2.0})
    pretrain.run(changed, out, resume="auto", max_steps=2)
    assert json.loads((out / "train_summary.json").read_text())["resumed_from"] is None
