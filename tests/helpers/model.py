"""The model of the unit tests: params.yaml's embedded-scale RaPModel configs and a random batch
for it (tests/test_model.py, tests/dist_worker.py, the GPU tests)."""

from __future__ import annotations

import dataclasses

import torch

from rap.config import LossConfig, ModelConfig, load_params

from helpers.config import PARAMS_YAML

CAPTIONS = [
    "a red circle moves left then disappears",
    "the small blue square spins in the top corner while a green star grows",
]


def model_cfgs(**loss_changes) -> tuple[ModelConfig, LossConfig]:
    """The embedded scale's model and pre-training loss configs, the loss with ``loss_changes``."""
    p = load_params(PARAMS_YAML)
    return p.cfg.model, dataclasses.replace(p.cfg.pretrain.loss, **loss_changes)


def random_batch(model, b: int = 2, k: int = 4, size: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    """``b`` clips of ``k`` random frames (two views) with captions from :data:`CAPTIONS`."""
    g = torch.Generator().manual_seed(seed)
    tok = model.tokenizer(
        (CAPTIONS * b)[:b],
        padding="max_length",
        truncation=True,
        max_length=model.cfg.text.max_len_train,
        return_tensors="pt",
    )
    return {
        "video": torch.randn(b, k, 3, size, size, generator=g),
        "video_aug": torch.randn(b, k, 3, size, size, generator=g),
        "input_ids": tok["input_ids"],
        "attention_mask": tok["attention_mask"],
    }
