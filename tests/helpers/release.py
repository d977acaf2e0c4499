"""The release fixture (tests/fixtures/release/, written by tools/release_fixture/build.sh):
rap's params at its small configuration, and a rap model holding a converted release file
(tests/test_release.py, benchmarks/release_recipe_effects.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from rap.config import Params, load_params
from rap.model.rap import RaPModel
from rap.release import importer

from helpers.config import PARAMS_YAML, REPO

FIXTURE = REPO / "tests" / "fixtures" / "release"
CONFIG = json.loads((FIXTURE / "config.json").read_text())


def fixture_overrides() -> dict[str, Any]:
    """params.yaml's embedded scale at the fixture's small configuration (config.json)."""
    small = CONFIG["small"]
    return {
        "model.vision.img_size": small["image_size"],
        "model.vision.patch_size": small["patch_size"],
        "model.vision.embed_dim": small["vision_width"],
        "model.vision.depth": small["vision_depth"],
        "model.vision.num_heads": small["vision_heads"],
        "model.text.tokenizer": str(FIXTURE),
        "model.text.hidden_size": small["hidden_size"],
        "model.text.num_layers": small["num_layers"],
        "model.text.num_heads": small["num_heads"],
        "model.text.intermediate_size": small["intermediate_size"],
        "model.text.max_len_eval": CONFIG["max_len"],
        "model.embed_dim": small["embed_dim"],
        "pretrain.loss.momentum": True,
        "pretrain.loss.queue_size": small["queue_size"],
        "evaluate.recipe": "release",
        "evaluate.itm_rerank_k": CONFIG["k_test"],
    }


def fixture_params() -> Params:
    return load_params(PARAMS_YAML, fixture_overrides())


def imported_model(layout: str, out: Path) -> tuple[RaPModel, dict[str, Any], list[str]]:
    """``(model in eval mode, the imported checkpoint's params, missing keys)`` of
    ``release_<layout>.pth`` converted into ``out`` (rap.release.importer)."""
    params = fixture_params()
    path = importer.import_release(FIXTURE / f"release_{layout}.pth", out, params.to_flat_dict())
    ckpt = torch.load(path, weights_only=True)
    torch.manual_seed(0)
    model = RaPModel(importer.adopt_checkpoint_pixels(params.cfg.model, ckpt["params"]), params.cfg.pretrain.loss)
    result = model.load_state_dict(ckpt["model"], strict=False)
    assert not result.unexpected_keys, result.unexpected_keys[:5]
    return model.eval(), ckpt["params"], list(result.missing_keys)
