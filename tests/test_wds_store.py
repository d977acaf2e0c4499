"""Frames from tar shards (issue 17, part 2): the test corpus extracted into ``wds-npy`` tars
(4 clips each) gives batch for batch the tensors of the ``npy`` store, a short pre-training
from it ends with bitwise the same weights, and a run stopped and resumed on it ends as the
uninterrupted one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from rap.checkpoint_io import load_checkpoint
from rap.data.datasets import build_pretrain_loader
from rap.data.extract import extract
from rap.data.records import read_index
from rap.model.tokenizer import build_tokenizer
from rap.training import pretrain

SOURCES = ("webvid", "cc3m")
# 2 epochs of 5 micro-batches (batch 8): short, with an epoch boundary to resume across
OVERRIDES = {"pretrain.optim.epochs": 2, "pretrain.optim.checkpoint_every": 2}


@pytest.fixture(scope="module")
def wds_overrides(corpus_root: Path, make_params, tmp_path_factory) -> dict:
    """The pre-training sources of the test corpus, extracted again into tar shards under a root
    of their own (the same media: the raw folders are linked, the manifests copied)."""
    root = tmp_path_factory.mktemp("wds") / "data"
    (root / "raw").mkdir(parents=True)
    (root / "manifest").mkdir()
    overrides = {"data.root": str(root), "data.store_format": "wds-npy", "data.wds_shard_clips": 4}
    for name in SOURCES:
        os.symlink(corpus_root / "raw" / name, root / "raw" / name)
        (root / "manifest" / f"{name}.jsonl").write_bytes((corpus_root / "manifest" / f"{name}.jsonl").read_bytes())
        extract(name, make_params(overrides).cfg.data, processes=1)
    return overrides


def test_tar_shards_hold_every_clip_of_the_npy_store(corpus_root, wds_overrides):
    root = Path(wds_overrides["data.root"])
    for name in SOURCES:
        npy, wds = read_index(corpus_root, name), read_index(root, name)
        assert [e.record.video_id for e in wds] == [e.record.video_id for e in npy]
        assert all(e.store.endswith(".npy") for e in npy) and all(".tar#" in e.store for e in wds)
        tars = {e.store.split("#")[0] for e in wds}
        assert len(tars) == -(-len({e.record.path for e in wds}) // 4)  # 4 distinct clips per tar


def test_same_batches_as_the_npy_store(make_params, wds_overrides):
    params_npy, params_wds = make_params(OVERRIDES), make_params({**OVERRIDES, **wds_overrides})
    tok = build_tokenizer(params_npy.cfg.model.text)
    loaders = [build_pretrain_loader(p.cfg, tok, seed=0) for p in (params_npy, params_wds)]
    for epoch in (0, 1):
        for loader in loaders:
            loader.set_epoch(epoch)
        pairs = list(zip(*loaders, strict=True))
        assert len(pairs) == loaders[0].steps_per_epoch
        for a, b in pairs:
            assert a.keys() == b.keys() and a["n_skipped"] == b["n_skipped"] == 0
            for key, value in a.items():
                if isinstance(value, torch.Tensor):
                    assert torch.equal(value, b[key]), (epoch, key)
                else:
                    assert value == b[key], (epoch, key)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_pretraining_from_tar_shards_is_bitwise_the_npy_run_and_resumes_exactly(
    make_params, wds_overrides, tmp_path, single_thread
):
    npy_run = pretrain.run(make_params(OVERRIDES), tmp_path / "npy", max_steps=7)
    params = make_params({**OVERRIDES, **wds_overrides})
    wds_run = pretrain.run(params, tmp_path / "wds", max_steps=7)
    a, b = _weights(npy_run), _weights(wds_run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # stopped after step 3 (inside epoch 0), resumed past the epoch boundary (5 steps per epoch)
    stopped = tmp_path / "stopped"
    pretrain.run(params, stopped, max_steps=3)
    resumed = pretrain.run(params, stopped, resume=True, max_steps=7)
    c = _weights(resumed)
    assert all(torch.equal(b[k], c[k]) for k in b)
