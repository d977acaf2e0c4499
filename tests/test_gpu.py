"""CUDA: mixed-precision pre-training steps and evaluation agree with the CPU within tolerance.

Marked ``gpu``: skipped (with the reason) where ``torch.cuda.is_available()`` is false
(tests/conftest.py). Small: the shrunk embedded config on the session's tiny corpus, two
optimiser steps. Nothing promises bit equality with the CPU (DESIGN.md, "Reproducibility"):
these bound the difference. What draws per-device randomness is off in the comparison (dropout
through the config; ITM, whose hard negatives are sampled on the device).
"""

from __future__ import annotations

import copy
import csv
import math
from pathlib import Path

import pytest
import torch

from rap.checkpoint_io import load_checkpoint, load_model_weights
from rap.data.datasets import build_eval_set, build_pretrain_loader
from rap.evaluation import score_matrices
from rap.model import RaPModel, build_tokenizer
from rap.registry import TEST_SPLIT
from rap.training.loop import DistContext, LoaderEpochs, resolve_precision, seed_everything, train

from helpers.config import NO_DROPOUT, torch_threads

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda", 0)
STEPS = 2


def test_precision_auto_is_bf16_from_compute_capability_8():
    native = torch.cuda.get_device_capability(CUDA) >= (8, 0)
    assert resolve_precision("auto", CUDA) == (torch.bfloat16 if native else torch.float16)
    assert resolve_precision("fp32", CUDA) == torch.float32 and resolve_precision("bf16", CUDA) == torch.bfloat16


def _pretrain_steps(make_params, out: Path, device: torch.device, precision: str):
    """The real loop, STEPS optimiser steps from the same initial weights and batches:
    (loss.csv rows, final weights on the CPU)."""
    params = make_params({**NO_DROPOUT, "pretrain.loss.itm_weight": 0.0, "pretrain.optim.precision": precision})
    cfg = params.cfg
    seed_everything(params.seed)
    model = RaPModel(cfg.model, cfg.pretrain.loss)  # built on the CPU: the same weights for both devices
    loader = build_pretrain_loader(cfg, build_tokenizer(cfg.model.text), seed=params.seed)
    try:
        train(
            model=model,
            data=LoaderEpochs(loader),
            stage="pretrain",
            optim_cfg=cfg.pretrain.optim,
            epochs=1,
            params=params,
            out_dir=out,
            ctx=DistContext(0, 1, device.index or 0, device),
            max_steps=STEPS,
            forward_kwargs=lambda epoch: {"phase": "pretrain", "alpha": 0.0},
        )
    finally:
        loader.close()
    with (out / "loss.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return rows, load_checkpoint(out / "checkpoint.pt")["model"]


def test_bf16_pretraining_steps_on_cuda_match_fp32_on_the_cpu(make_params, tmp_path):
    with torch_threads(1):
        cpu_rows, cpu_weights = _pretrain_steps(make_params, tmp_path / "cpu", torch.device("cpu"), "fp32")
    gpu_rows, gpu_weights = _pretrain_steps(make_params, tmp_path / "cuda", CUDA, "bf16")
    assert len(gpu_rows) == len(cpu_rows) == STEPS
    terms = [c for c in cpu_rows[0] if c not in ("step", "epoch", "lr")]
    assert "loss" in terms and "itc" in terms and "racl_v2t" in terms
    for cpu, gpu in zip(cpu_rows, gpu_rows):
        for term in terms:
            want, got = float(cpu[term]), float(gpu[term])
            assert math.isfinite(got), (gpu["step"], term)
            # bf16 keeps 8 mantissa bits (~0.4 % per rounding): a few per cent of the loss
            assert got == pytest.approx(want, rel=0.05, abs=0.05), (gpu["step"], term, got, want)
    # AdamW moves each weight by about lr per step, whatever the gradient's size: a flipped
    # small gradient costs at most ~2 lr per step; anything larger is a real difference.
    worst = max((gpu_weights[k].float() - cpu_weights[k].float()).abs().max().item() for k in cpu_weights)
    assert worst < 1e-2


def test_evaluation_on_cuda_equals_the_cpu(make_params, pretrained_checkpoint):
    cfg = make_params().cfg
    model = RaPModel(cfg.model, cfg.pretrain.loss)
    load_model_weights(model, pretrained_checkpoint)
    tokenizer = build_tokenizer(cfg.model.text)
    eval_set = build_eval_set("msvd", TEST_SPLIT, cfg)
    assert cfg.evaluate.itm_rerank_k > 0  # the ITM re-ranking is compared too
    with torch_threads(1):
        cpu = score_matrices(copy.deepcopy(model), tokenizer, eval_set, cfg.evaluate, "cpu")
    gpu = score_matrices(model, tokenizer, eval_set, cfg.evaluate, CUDA)
    # ITC runs in fp32 on both (cuDNN may use TF32 for the patch embedding): cosines agree closely
    torch.testing.assert_close(gpu.itc, cpu.itc, rtol=0, atol=5e-3)
    # ITM re-ranking runs in half precision on a GPU (rap.evaluation._itm_autocast): looser
    torch.testing.assert_close(gpu.t2v, cpu.t2v, rtol=0.02, atol=0.1)
    torch.testing.assert_close(gpu.v2t, cpu.v2t, rtol=0.02, atol=0.1)
    assert torch.equal(gpu.text_to_video, cpu.text_to_video)


def test_paper_scale_evaluation_precision_on_cuda(make_params, pretrained_checkpoint):
    """The paper scale's evaluation settings (precision auto, tf32) on a real device: bf16
    encoders and TF32 matmuls where native (Ampere or newer), and ITC close to fp32's."""
    from rap.precision import apply_tf32, bf16_native, evaluation_dtype

    native = bf16_native(CUDA)
    assert evaluation_dtype("auto", CUDA) == (torch.bfloat16 if native else torch.float32)
    fp32_cfg = make_params().cfg
    paper_cfg = make_params({"evaluate.precision": "auto", "evaluate.tf32": True}).cfg
    model = RaPModel(fp32_cfg.model, fp32_cfg.pretrain.loss)
    load_model_weights(model, pretrained_checkpoint)
    tokenizer = build_tokenizer(fp32_cfg.model.text)
    eval_set = build_eval_set("msvd", TEST_SPLIT, fp32_cfg)
    try:
        reference = score_matrices(model, tokenizer, eval_set, fp32_cfg.evaluate, CUDA)
        fast = score_matrices(model, tokenizer, eval_set, paper_cfg.evaluate, CUDA)
        assert torch.backends.cuda.matmul.allow_tf32 == native
        # bf16 keeps ~3 significant digits: cosines within 0.03, the ranking nearly unchanged
        torch.testing.assert_close(fast.itc, reference.itc, rtol=0, atol=3e-2)
    finally:
        apply_tf32(False, CUDA)
