"""Training engine end to end on the synthetic corpus with the embedded (tiny) model, CPU:
optimiser groups and lr schedule, pre-training (loss falls, outputs, MLflow), fine-tuning
(checkpoint selection on the validation split / last epoch), non-finite loss errors."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from rap.checkpoint_io import load_checkpoint
from rap.config import OptimConfig
from rap.model import RaPModel
from rap.training import finetune, pretrain
from rap.training.checkpoint import latest_checkpoint
from rap.training.loop import NonFiniteLossError
from rap.training.optim import LrSchedule, build_optimizer


def _rows(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------ optimiser and schedule


def test_weight_decay_skips_norms_biases_and_temperature(make_params):
    cfg = make_params().cfg
    model = RaPModel(cfg.model, cfg.pretrain.loss)
    opt = build_optimizer(model, cfg.pretrain.optim)
    by_id = {id(p): n for n, p in model.named_parameters()}
    decayed = {by_id[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {by_id[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert "temp" in plain
    assert all(model.get_parameter(n).ndim >= 2 for n in decayed)
    assert not any(n.endswith(".bias") or "norm" in n.lower() for n in decayed)
    assert all(n in plain for n in model.no_weight_decay_names())
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.05}
    assert len(decayed) + len(plain) == sum(1 for p in model.parameters() if p.requires_grad)


def test_lr_schedule_warmup_step_and_cosine():
    step = LrSchedule(
        OptimConfig(lr=1e-3, warmup_lr=1e-5, warmup_steps=10, schedule="step", decay_rate=0.5),
        steps_per_epoch=20,
        total_steps=100,
    )
    assert step.lr_at(0) == pytest.approx(1e-5)
    assert step.lr_at(5) == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2)
    assert step.lr_at(10) == pytest.approx(1e-3)  # warm-up done, still epoch 0
    assert step.lr_at(20) == pytest.approx(5e-4)  # epoch 1: lr * 0.5**1
    assert step.lr_at(60) == pytest.approx(1.25e-4)
    cos = LrSchedule(
        OptimConfig(lr=1e-3, warmup_steps=0, schedule="cosine", min_lr=1e-5), steps_per_epoch=10, total_steps=50
    )
    assert cos.lr_at(0) == pytest.approx(1e-3)
    assert cos.lr_at(25) == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2)
    assert cos.lr_at(50) == pytest.approx(1e-5)
    assert all(cos.lr_at(s) >= cos.lr_at(s + 1) for s in range(50))


# ------------------------------------------------------------------ pre-training


def test_pretraining_loss_falls_and_logs(make_params, tmp_path, monkeypatch, single_thread):
    monkeypatch.setenv("RAP_TRACKING", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("RAP_PIPELINE_RUN_ID", "test-training")
    params = make_params({"pretrain.optim.epochs": 3, "pretrain.optim.checkpoint_every": 2})
    out = tmp_path / "pre"
    final = pretrain.run(params, out)

    rows = _rows(out / "loss.csv")
    steps_per_epoch = 5  # (24 WebVid clips + 16 CC3M images) / batch 8
    assert [int(r["step"]) for r in rows] == list(range(1, 3 * steps_per_epoch + 1))
    assert {"loss", "itc", "racl_v2t", "racl_t2v", "itm", "lm", "intra_video", "intra_text", "lr"} <= set(rows[0])
    loss = [float(r["loss"]) for r in rows]
    first, last = sum(loss[:3]) / 3, sum(loss[-3:]) / 3
    assert last < 0.95 * first, f"loss did not fall: first steps {loss[:3]}, last steps {loss[-3:]}"

    metrics, run, timings = (json.loads((out / f"train_{k}.json").read_text()) for k in ("metrics", "run", "timings"))
    assert run["steps"] == 15 and run["finished"] and timings["clips_per_s"] > 0
    assert metrics["flops_per_step"] > 1e9  # counted on the first step (Table 8's FLOPs column)
    assert set(metrics["final_loss"]) >= {"loss", "itc", "racl_v2t", "racl_t2v"}
    assert set(metrics) == {"final_loss", "flops_per_step"}  # metrics only: no paths, counts or timings
    ckpt = load_checkpoint(final)
    assert ckpt["stage"] == "pretrain" and ckpt["step"] == 15
    kept = sorted(p.name for p in (out / "checkpoints").glob("*.pt"))
    assert kept == ["step-00000012.pt", "step-00000014.pt", "step-00000015.pt"]  # only the last 3
    assert not list(out.glob("**/.*.tmp-*"))  # atomic writes leave no temporary files

    import mlflow

    runs = mlflow.search_runs(experiment_names=["rap"], filter_string="tags.`rap.stage` = 'pretrain'")
    assert len(runs) == 1
    client = mlflow.MlflowClient()
    history = client.get_metric_history(runs.iloc[0].run_id, "train/loss")
    assert [m.step for m in history] == list(range(1, 16))
    logged = set(client.get_run(runs.iloc[0].run_id).data.metrics)
    assert {
        "train/lr",
        "train/temperature",
        "train/clips_per_s",
        "train/peak_memory_mb",
        "train/skipped_clips",
        "train/racl_t2v",
        "train/itm",
    } <= logged


def test_non_finite_loss_names_step_and_term(make_params, tmp_path, monkeypatch, single_thread):
    calls = {"n": 0}
    forward = RaPModel.forward

    def poisoned(self, batch, **kw):
        out = forward(self, batch, **kw)
        calls["n"] += 1
        if calls["n"] == 2:
            out["racl_t2v"] = out["racl_t2v"] * float("nan")
            out["loss"] = out["loss"] + out["racl_t2v"]
        return out

    monkeypatch.setattr(RaPModel, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"step 2 .*'loss', 'racl_t2v'"):
        pretrain.run(make_params(), tmp_path / "nan", max_steps=4)


# ------------------------------------------------------------------ fine-tuning


def test_finetune_selects_best_validation_epoch(
    make_params, pretrained_checkpoint, tmp_path, monkeypatch, single_thread
):
    """MSVD has a validation split: checkpoint.pt must be the best epoch's weights. The real
    evaluation runs every epoch; its score is replaced by a scripted one (best: epoch 1) so
    that the test knows which epoch must win."""
    real_scores, scripted = [], iter([10.0, 30.0, 20.0])

    def score(metrics):
        real_scores.append(finetune.selection_score.__wrapped__(metrics))
        return next(scripted)

    score.__wrapped__ = finetune.selection_score
    monkeypatch.setattr(finetune, "selection_score", score)
    out = tmp_path / "msvd"
    final = finetune.run(make_params(), "msvd", pretrained_checkpoint, out)

    summary = json.loads((out / "train_run.json").read_text())
    assert json.loads((out / "train_metrics.json").read_text())["best_val_score"] == 30.0
    assert summary["best_epoch"] == 1 and summary["finished"]
    assert [v["epoch"] for v in summary["validation"]] == [0, 1, 2]
    assert all(0.0 <= s <= 100.0 for s in real_scores) and len(real_scores) == 3
    assert {"t2v_R@1", "t2v_R@10", "v2t_R@1"} <= set(summary["validation"][0])
    chosen = load_checkpoint(final)
    last = load_checkpoint(latest_checkpoint(out))
    assert chosen["epoch"] == 1
    assert last["position"]["epoch"] == 3
    assert any(not torch.equal(chosen["model"][k], last["model"][k]) for k in chosen["model"])
    start = load_checkpoint(pretrained_checkpoint)["model"]
    assert any(not torch.equal(chosen["model"][k], start[k]) for k in start)  # it did train


def test_finetune_without_validation_split_keeps_last_epoch(
    make_params, pretrained_checkpoint, tmp_path, single_thread
):
    out = tmp_path / "msrvtt"
    final = finetune.run(make_params(), "msrvtt-9k", pretrained_checkpoint, out)  # 7k validates on val-7k
    summary = json.loads((out / "train_run.json").read_text())
    assert summary["best_epoch"] is None and summary["validation"] == [] and summary["finished"]
    final_loss = json.loads((out / "train_metrics.json").read_text())["final_loss"]
    assert set(final_loss) == {"loss", "itc", "racl_v2t", "racl_t2v", "itm"}  # finetune.loss
    chosen, last = load_checkpoint(final), load_checkpoint(latest_checkpoint(out))
    assert all(torch.equal(chosen["model"][k], last["model"][k]) for k in last["model"])
    rows = _rows(out / "loss.csv")
    assert len(rows) == summary["steps"] > 0 and math.isfinite(float(rows[-1]["loss"]))


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((7, 0), torch.float16), ((7, 5), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)],
)
def test_precision_auto_follows_native_bf16(capability, expected, monkeypatch):
    """`precision: auto`: bf16 only where it is native (Ampere and later), fp16 with loss scaling on
    a V100 (sm70), where torch.cuda.is_bf16_supported() also says yes (emulated bf16)."""
    from rap.training.loop import resolve_precision

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_precision("auto", torch.device("cuda", 0)) == expected
    assert resolve_precision("auto", torch.device("cpu")) == torch.float32
    assert resolve_precision("fp16", torch.device("cpu")) == torch.float16  # explicit choices are honoured
