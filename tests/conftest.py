"""Shared fixtures: a reduced synthetic corpus (generated and extracted once per session) and
the REAL embedded config from params.yaml shrunk through ``load_params(overrides=...)``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from rap.config import Params, load_params

from helpers.config import CORPUS_DATASETS, CORPUS_SCALE, PARAMS_YAML, shrunk_overrides, torch_threads


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` run only where CUDA is; elsewhere they are skipped, saying why."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="gpu: needs a CUDA device (torch.cuda.is_available() is False)")
    for item in gpu:
        item.add_marker(skip)


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


@pytest.fixture()
def single_thread():
    with torch_threads(1):
        yield


@pytest.fixture(autouse=True)
def tracking_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test logs nowhere unless it points MLflow at a temporary store itself (and sets or
    removes RAP_TRACKING): never into the repository's mlflow.db."""
    monkeypatch.setenv("RAP_TRACKING", "0")
