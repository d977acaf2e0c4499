"""Shared fixtures: a reduced synthetic corpus (generated and extracted once per session) and
the REAL embedded config from params.yaml shrunk through ``load_params(overrides=...)``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from rap.config import Params, load_params

REPO = Path(__file__).resolve().parents[1]
PARAMS_YAML = REPO / "params.yaml"
# The datasets the training tests need: the pre-training mix, MSRVTT (no validation split)
# and MSVD (train/val/test); 0.1 of the embedded scale (24 WebVid clips, 16 CC3M images, ...).
CORPUS_DATASETS = ("webvid", "cc3m", "msrvtt", "msvd")
CORPUS_SCALE = 0.1


def shrunk_overrides(root: Path) -> dict[str, Any]:
    """Overrides turning params.yaml's embedded scale into the test scale on the corpus at ``root``."""
    return {
        "data.root": str(root),
        "datasets": list(CORPUS_DATASETS),
        "evaluate.zero_shot": ["msrvtt", "msvd"],
        "finetune.tasks": ["msrvtt-7k", "msrvtt-9k", "msvd"],
        "pretrain.optim.batch_size": 8,
        "pretrain.optim.epochs": 3,
        "pretrain.optim.warmup_steps": 2,
        "pretrain.optim.log_every": 1,
        "finetune.optim.batch_size": 8,
        "finetune.optim.log_every": 1,
        "finetune.epochs": {"msrvtt-7k": 1, "msrvtt-9k": 1, "msvd": 3},
    }


@pytest.fixture(scope="session")
def corpus_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/raw``, ``index`` and ``frames`` of the synthetic corpus, built by the data
    module's own generator and ``rap extract`` code."""
    from rap.data.extract import extract
    from rap.data.synthetic import generate

    root = tmp_path_factory.mktemp("corpus")
    data_cfg = load_params(PARAMS_YAML, shrunk_overrides(root)).cfg.data
    for dataset in CORPUS_DATASETS:
        generate(dataset, root / "raw" / dataset, seed=0, scale=CORPUS_SCALE)
        extract(dataset, data_cfg)
    return root


@pytest.fixture(scope="session")
def make_params(corpus_root: Path) -> Callable[..., Params]:
    """``make_params({"pretrain.optim.epochs": 2, ...})``: params.yaml's embedded scale on the
    tiny corpus, with the given extra overrides."""

    def make(overrides: dict[str, Any] | None = None) -> Params:
        return load_params(PARAMS_YAML, {**shrunk_overrides(corpus_root), **(overrides or {})})

    return make


@pytest.fixture(scope="session")
def pretrained_checkpoint(make_params: Callable[..., Params], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short pre-training run (4 steps) to fine-tune from."""
    from rap.training import pretrain

    out = tmp_path_factory.mktemp("pretrained")
    with pytest.MonkeyPatch.context() as mp, torch_threads(1):
        mp.setenv("RAP_TRACKING", "0")
        return pretrain.run(make_params(), out, max_steps=4)


class torch_threads:
    """Run with ``n`` intra-op threads (bit-exact CPU kernels for resume/DDP comparisons, and
    faster on a shared 2-core machine); restores the previous count."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> None:
        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.before)


@pytest.fixture()
def single_thread():
    with torch_threads(1):
        yield


@pytest.fixture(autouse=True)
def tracking_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test logs nowhere unless it points MLflow at a temporary store itself (and sets or
    removes RAP_TRACKING): never into the repository's mlflow.db."""
    monkeypatch.setenv("RAP_TRACKING", "0")


class without_dropout:
    """Build every RaPModel with dropout probability 0 (multi-rank equivalence tests: each
    rank draws its own dropout masks, so a 2-rank run and a 1-process run cannot share them)."""

    def __enter__(self) -> None:
        from rap.model.rap import RaPModel

        self.cls, self.init = RaPModel, RaPModel.__init__
        init = self.init

        def init_without_dropout(model, *args, **kwargs):
            init(model, *args, **kwargs)
            for m in model.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = 0.0

        RaPModel.__init__ = init_without_dropout

    def __exit__(self, *exc: object) -> None:
        self.cls.__init__ = self.init
