"""Git keeps every DVC metrics and plots file of the pipelines beside dvc.lock, and nothing else of
runs/ (.gitignore), so that ``dvc exp show`` / ``dvc metrics diff`` / ``dvc plots diff`` read them
in every commit and experiment; and ``rap compare`` turns ``dvc exp show --json`` into its rows.

The engine itself (experiments, queue, diffs, ``rap compare`` on real output) runs in
tests/test_pipeline.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from rap.compare import compare_table, differing_params, experiment_rows, load_yaml, recall_cell, stale_outputs

REPO = Path(__file__).resolve().parents[1]


def _outs() -> list[tuple[str, bool, bool]]:
    """``(path, is a metrics or plots file, cached)`` of every out of dvc.yaml and seeds/dvc.yaml."""
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        return [
            (Path(out.fs_path).relative_to(REPO).as_posix(), bool(out.metric or out.plot), out.use_cache)
            for stage in repo.index.stages
            for out in stage.outs
        ]


def _ignored(paths: list[str]) -> set[str]:
    proc = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin"],
        input="\n".join(paths),
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode in (0, 1), proc.stderr  # 1: none ignored
    return set(proc.stdout.split())


def test_git_keeps_metrics_and_plots_and_ignores_the_rest_of_runs():
    outs = _outs()
    tracked = [p for p, is_metric, _ in outs if is_metric]
    # the other outs: the reports (committed too) and what git ignores (checkpoints, data)
    others = [p for p, is_metric, _ in outs if not is_metric and not p.startswith("reports/")]
    assert "runs/eval/zeroshot/msrvtt.json" in tracked and "runs/pretrain/main/loss.csv" in tracked
    assert any(p.startswith("runs/seeds/") for p in tracked)  # seeds/dvc.yaml is read too
    assert all(not cached for p, is_metric, cached in outs if is_metric)  # git holds them, not the cache
    assert _ignored(tracked) == set(), "metrics/plots files git ignores (see .gitignore)"

    # everything else a run writes stays out of git: checkpoints, data, provenance, timings,
    # step checkpoints, set-aside runs, and loss curves no stage declares (ablations)
    run_dirs = {str(Path(p).parent) for p in tracked if p.endswith("train_metrics.json")}
    beside = [f"{d}/{name}" for d in run_dirs for name in ("train_run.json", "train_timings.json", "best.pt")]
    beside += [f"{d}/checkpoints/step-1.pt" for d in run_dirs]
    beside += [f"{d}/set-aside/0-step-1/{name}" for d in run_dirs for name in ("loss.csv", "train_metrics.json")]
    beside += [p[: -len(".json")] + ".run.json" for p in tracked if p.startswith("runs/eval/")]
    beside += ["runs/ablation/racl-none/loss.csv"]
    should_ignore = others + beside
    assert _ignored(should_ignore) == set(should_ignore), sorted(set(should_ignore) - _ignored(should_ignore))


_NO_FILE = {"error": {"type": "FileNotFoundError", "msg": "[Errno 2] No such file or directory"}}


def _entry(rev: str, name: str | None, params: dict, metrics: dict) -> dict:
    """One revision as ``dvc exp show --json`` (DVC 3) writes it."""
    return {
        "rev": rev,
        "name": name,
        "data": {
            "params": {"params.yaml": {"data": params}},
            "metrics": {
                path: ({"error": {"msg": "x"}} if data is None else _NO_FILE if data == "no file" else {"data": data})
                for path, data in metrics.items()
            },
        },
        "error": None,
        "experiments": None,
    }


ZS = "runs/eval/zeroshot/msrvtt.json"


def _zs(r1: float, lo: float, hi: float, patch: float) -> dict:
    return {
        "t2v": {"R@1": r1},
        "ci95": {"t2v": {"R@1_lo": lo, "R@1_hi": hi}},
        "localisation": {"patch": {"paper": {"auc": patch}}, "token": {"paper": {"auc": 0.5}}},
    }


def test_compare_rows_differing_params_and_cells():
    base = {"lambda": 1.0, "seed": 0, "ablations": ["racl-none"], "embedded": {"pretrain": {"optim": {"lr": 0.001}}}}
    main = _entry("a" * 40, "main", base, {ZS: _zs(4.0, 1.5, 7.0, 0.23)})
    main["experiments"] = [
        {
            "revs": [
                _entry(
                    "b" * 40,
                    "lr-up",
                    {**base, "embedded": {"pretrain": {"optim": {"lr": 0.002}}}},
                    {ZS: None, "runs/eval/zeroshot/didemo.json": "no file"},
                )
            ],
            "executor": {"state": "success"},
            "name": "lr-up",
        },
        {
            "revs": [
                _entry("c" * 40, "lambda-2", {**base, "lambda": 2.0, "ablations": []}, {ZS: _zs(3.0, 1.0, 5.5, 0.3)})
            ],
            "executor": None,
            "name": "lambda-2",
        },
        {"revs": [_entry("d" * 40, None, {}, {})], "executor": {"state": "queued"}, "name": None},
    ]
    show = [_entry("workspace", None, base, {ZS: _zs(4.0, 1.5, 7.0, 0.23)}), main]
    rows = list(experiment_rows(show))
    assert [(r.label, r.state) for r in rows] == [
        ("workspace", "workspace"),
        ("main", "baseline"),
        ("lr-up", "success"),
        ("lambda-2", "success"),
        ("ddddddd", "queued"),
    ]
    # the run lists and the equal seed are no knobs; a queued row (no params yet) changes nothing
    assert differing_params(rows) == ["lambda", "embedded.pretrain.optim.lr"]
    headers, body = compare_table(rows)
    assert headers == [
        "experiment",
        "state",
        "lambda",
        "embedded.pretrain.optim.lr",
        "zero-shot msrvtt R@1",
        "patch AUC (msrvtt)",
        "token AUC (msrvtt)",
    ]
    assert body[3] == ["lambda-2", "success", "2.0", "0.001", "3.0 (1.0–5.5)", "0.30", "0.50"]
    assert body[2][4:] == ["!", "!", "!"]  # DVC could not read the file
    assert body[4][2:] == ["", "", "", "", ""]
    assert recall_cell({"t2v": {"R@1": 2.5}}) == "2.5"


def test_stale_outputs_follow_params_and_upstream_hashes():
    """On the committed dvc.lock: nothing is stale with the committed params; a knob makes the
    main run and everything downstream stale (what `dvc exp run -S lambda=2.0` reruns), not
    the data or the ablation grid; a changed checkpoint hash makes its evaluations stale."""
    lock = load_yaml((REPO / "dvc.lock").read_text())
    params = load_yaml((REPO / "params.yaml").read_text())
    assert stale_outputs(lock, params) == set()

    stale = stale_outputs(lock, {**params, "lambda": 2.0})
    assert {
        "runs/pretrain/main/checkpoint.pt",
        "runs/eval/zeroshot/didemo.json",  # its checkpoint's stage is stale
        "runs/finetune/msvd/checkpoint.pt",
        "runs/eval/finetuned/msvd.json",
        "reports/table7.md",
        "reports/figure3.png",
    } <= stale
    assert not any(p.startswith(("data/", "runs/ablation/", "runs/eval/ablation/")) for p in stale), sorted(stale)

    (ckpt,) = [d for d in lock["stages"]["zeroshot@msvd"]["deps"] if d["path"].endswith("checkpoint.pt")]
    ckpt["md5"] = "0" * 32  # it evaluated another checkpoint than pretrain's
    stale = stale_outputs(lock, params)
    assert "runs/eval/zeroshot/msvd.json" in stale and "runs/eval/zeroshot/msrvtt.json" not in stale
