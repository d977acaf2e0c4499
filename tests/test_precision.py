"""Precision and deterministic-kernel settings per scale (rap.precision, rap.config,
rap.training.determinism): what each scale resolves to and what is rejected. The GPU side
(bf16 autocast, TF32 switches on a real device) is exercised by tests/test_gpu.py where a GPU
exists; here the device capability is the only thing faked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rap import precision
from rap.config import ConfigError, load_params
from rap.training.determinism import deterministic_mode, seed_everything

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)


def test_scales_state_their_precision_and_determinism():
    embedded = load_params(REPO / "params.yaml", {"scale": "embedded"}).cfg
    paper = load_params(REPO / "params.yaml", {"scale": "paper"}).cfg
    # embedded: fp32 everywhere, no TF32, an op without a deterministic kernel stops the run
    assert (embedded.pretrain.optim.precision, embedded.finetune.optim.precision) == ("fp32", "fp32")
    assert embedded.evaluate.precision == "fp32"
    assert not (embedded.pretrain.optim.tf32 or embedded.finetune.optim.tf32 or embedded.evaluate.tf32)
    assert embedded.deterministic == "error"
    # paper: bf16 where native and TF32 for fine-tuning and evaluation too; warn, never stop
    for block in (paper.pretrain.optim, paper.finetune.optim, paper.evaluate):
        assert block.precision == "auto" and block.tf32
    assert paper.deterministic == "warn"


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("evaluate.precision", "fp16", "evaluate.precision"),
        ("evaluate.precision", "fp64", "evaluate.precision"),
        ("deterministic", "sometimes", "deterministic"),
        ("finetune.optim.tf32", "maybe", "tf32"),
    ],
)
def test_bad_precision_settings_are_rejected(key, value, named):
    with pytest.raises(ConfigError, match=named):
        load_params(REPO / "params.yaml", {key: value})


def test_cpu_stays_fp32_whatever_the_setting():
    for setting in ("auto", "fp32"):
        assert precision.training_dtype(setting, CPU) == torch.float32
        assert precision.evaluation_dtype(setting, CPU) == torch.float32
    assert precision.apply_tf32(True, CPU) is False


@pytest.mark.parametrize(
    ("capability", "train", "evaluate"), [((9, 0), "bfloat16", "bfloat16"), ((7, 0), "float16", "float32")]
)
def test_auto_follows_the_gpu_generation(monkeypatch, capability, train, evaluate):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert precision.training_dtype("auto", CUDA) == getattr(torch, train)
    assert precision.evaluation_dtype("auto", CUDA) == getattr(torch, evaluate)
    assert precision.bf16_native(CUDA) == (capability >= (8, 0))


def test_deterministic_setting_and_its_override(monkeypatch):
    monkeypatch.delenv("RAP_DETERMINISTIC", raising=False)
    try:
        seed_everything(0, "warn")
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert deterministic_mode("none") == "0" and deterministic_mode("error") == "1"
        monkeypatch.setenv("RAP_DETERMINISTIC", "1")  # the environment wins over params
        seed_everything(0, "warn")
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        with pytest.raises(ValueError, match="deterministic='sometimes'"):
            deterministic_mode("sometimes")
    finally:
        torch.use_deterministic_algorithms(True)
