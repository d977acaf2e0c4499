"""No rank idles while another evaluates: `rap evaluate` and fine-tuning's validation shard
the video and text encoding and the ITM re-ranking across ranks and gather the scores. Under
torchrun (2 ranks, gloo, CPU) they give the same metrics as one process."""

from __future__ import annotations

import json

import torch

from rap.checkpoint_io import load_checkpoint, load_model_weights
from rap.data.datasets import build_eval_set
from rap.evaluation import evaluate
from rap.model import RaPModel, build_tokenizer
from rap.registry import FINETUNE

from helpers.cli import rap_command, run_ok, subprocess_env
from helpers.config import shrunk_overrides

EVAL = {"evaluate.itm_rerank_k": 3, "evaluate.batch_size": 3}  # batches straddle the ranks' shares


def test_two_rank_evaluation_equals_one_process(corpus_root, pretrained_checkpoint, tmp_path):
    overrides = {**shrunk_overrides(corpus_root), **EVAL}
    outs = {}
    for ranks in (1, 2):
        outs[ranks] = tmp_path / f"msvd-{ranks}.json"
        run_ok(
            rap_command(
                "evaluate",
                "msvd",
                "--checkpoint",
                str(pretrained_checkpoint),
                "--out",
                str(outs[ranks]),
                overrides=overrides,
                ranks=ranks,
            ),
            subprocess_env(),
        )
    one, two = (json.loads(outs[r].read_text()) for r in (1, 2))
    assert one == two  # every R@K, MdR, MnR, in both directions, with and without re-ranking
    info = json.loads((tmp_path / "msvd-2.run.json").read_text())
    assert info["world_size"] == 2 and info["num_queries"] > info["num_videos"] >= 2


def test_two_rank_finetuning_validates_like_one_process(corpus_root, pretrained_checkpoint, tmp_path, single_thread):
    overrides = {
        **shrunk_overrides(corpus_root),
        **EVAL,
        "finetune.epochs": {"msrvtt-7k": 1, "msrvtt-9k": 1, "msvd": 2},
    }
    out = tmp_path / "msvd"
    run_ok(
        rap_command(
            "finetune",
            "msvd",
            "--checkpoint",
            str(pretrained_checkpoint),
            "--out",
            str(out),
            overrides=overrides,
            ranks=2,
        ),
        subprocess_env(),
    )
    history = json.loads((out / "train_run.json").read_text())["validation"]
    assert [v["epoch"] for v in history] == [0, 1]
    best = load_checkpoint(out / "best.pt")

    from rap.config import load_params

    from helpers.cli import REPO

    cfg = load_params(REPO / "params.yaml", overrides).cfg
    model = RaPModel(cfg.model, cfg.finetune.loss)
    load_model_weights(model, out / "best.pt")
    eval_set = build_eval_set("msvd", FINETUNE["msvd"].val, cfg)
    metrics = evaluate(
        model,
        build_tokenizer(cfg.model.text),
        eval_set,
        cfg.evaluate,
        torch.device("cpu"),
        max_len=cfg.model.text.max_len_eval,
    )
    one_process = {f"{d}_{k}": float(v) for d in ("t2v", "v2t") for k, v in metrics[d].items()}
    assert best["metrics"] == one_process  # what the 2 ranks measured on these weights
