"""After a short pre-training on the embedded corpus, zero-shot retrieval clearly beats chance.

The real embedded config from params.yaml on half the embedded corpus (120 WebVid clips, 80 CC3M
images; 100 MSRVTT test videos), 10 epochs (~125 steps, about a minute on 2 CPU cores). ITC
ranking only (no ITM re-ranking), so the check is on the contrastive embeddings themselves.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rap.config import load_params
from rap.data.extract import extract
from rap.data.synthetic import TEST_CLIPS, generate
from rap.evaluation import run_evaluation, run_info_path
from rap.training import pretrain

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a minute of real pre-training
def test_zero_shot_retrieval_beats_chance_after_short_pretraining(tmp_path, monkeypatch):
    monkeypatch.setenv("RAP_TRACKING", "0")
    root = tmp_path / "data"
    params = load_params(
        REPO / "params.yaml",
        {
            "data.root": str(root),
            "data.synthetic_scale": 0.5,
            "datasets": ["webvid", "cc3m", "msrvtt"],
            "evaluate.zero_shot": ["msrvtt"],
            "finetune.tasks": ["msrvtt-7k"],
            "pretrain.optim.epochs": 10,
            "evaluate.itm_rerank_k": 0,
        },
    )
    for dataset in ("webvid", "cc3m", "msrvtt"):
        generate(dataset, root / "raw" / dataset, seed=0, scale=params.cfg.data.synthetic_scale)
        extract(dataset, params.cfg.data)
    checkpoint = pretrain.run(params, tmp_path / "pretrain")
    metrics = run_evaluation(params, "msrvtt", "test", checkpoint, tmp_path / "zeroshot.json")

    info = json.loads(run_info_path(tmp_path / "zeroshot.json").read_text())
    n = info["num_videos"]
    assert n == round(TEST_CLIPS * 0.5) and info["num_queries"] == n  # 1k-A style: one caption per video
    chance_r1, chance_mnr = 100.0 / n, (n + 1) / 2
    for direction in ("t2v", "v2t"):
        m = metrics[direction]
        assert m["R@1"] >= 2 * chance_r1, (direction, m)
        assert m["MnR"] <= 0.75 * chance_mnr, (direction, m)
