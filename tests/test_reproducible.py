"""Bit-for-bit reproducibility (docs/DESIGN.md, "Reproducibility"; README): the data stages and
a short pre-training, run twice from scratch, write the same bytes; ``rap pretrain --set
seed=1`` (what ``dvc exp run -S seed=1`` runs) is a different run that is itself reproducible."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from rap.config import load_params
from rap.data.extract import extract
from rap.data.synthetic import generate
from rap.run_files import TRAIN_METRICS, TRAIN_RUN, TRAIN_TIMINGS
from rap.training import pretrain

from helpers.config import PARAMS_YAML, shrunk_overrides, torch_threads

# One video dataset and the image dataset (24 clips, 16 images: enough narrow clips that the
# x264 run-to-run variation fixed in synthetic.X264_OPTIONS shows up in all but ~2 % of runs).
DATA_DATASETS = ("webvid", "cc3m")
DATA_SCALE = 0.1
STEPS = 2
# Step checkpoints at every step: their bytes (optimiser, RNG states) are compared too.
RUN_OVERRIDES = {"pretrain.optim.checkpoint_every": 1}
# train_run.json keys that name the run's own directory (each run has its own)
PATH_KEYS = ("checkpoint", "resumed_from")


def _file_digests(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _data_stages(root: Path) -> dict[str, str]:
    """Generate and extract ``DATA_DATASETS`` under ``root`` into three frame-store formats;
    returns the digests of every file written (corpus, index, the stores)."""
    digests: dict[str, str] = {}
    for fmt in ("npy", "jpeg", "wds"):  # wds: JPEG clips in tar shards
        data_cfg = load_params(PARAMS_YAML, {**shrunk_overrides(root), "data.store_format": fmt}).cfg.data
        for dataset in DATA_DATASETS:
            generate(dataset, root / "raw" / dataset, seed=0, scale=DATA_SCALE)
            extract(dataset, data_cfg)
        # the index names the store files of this format: keep its digest before the next format
        digests.update({f"{fmt}:{k}": v for k, v in _file_digests(root / "index").items()})
    digests.update(_file_digests(root))
    return digests


def test_data_stages_write_identical_bytes_twice(tmp_path: Path) -> None:
    first, second = _data_stages(tmp_path / "a"), _data_stages(tmp_path / "b")
    videos = [k for k in first if k.endswith(".mp4")]
    stores = {
        fmt: [k for k in first if k.startswith("frames/") and k.endswith(suffix)]
        for fmt, suffix in (("npy", ".npy"), ("jpeg", ".jpgs"))
    }
    assert len(videos) == 24 and any(k.endswith(".jpg") for k in first)
    assert len(stores["npy"]) == len(stores["jpeg"]) == 24 + 16
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []


def _run_outputs(out: Path) -> dict[str, Any]:
    """Everything a pre-training run writes but its timings (measured: they vary run to run,
    which is why they have a file of their own), with the run's own paths left out."""
    run = json.loads((out / TRAIN_RUN).read_text())
    for key in PATH_KEYS:
        run.pop(key, None)
    files = {k: v for k, v in _file_digests(out).items() if k not in (TRAIN_RUN, TRAIN_TIMINGS)}
    assert TRAIN_METRICS in files  # the DVC metrics file is compared byte for byte
    return {"files": files, "run": run}


def _cli_pretrain(corpus_root: Path, out: Path, seed: int) -> Path:
    """``rap pretrain --set seed=SEED`` on the test corpus in a fresh process (1 torch thread,
    as the in-process runs: the thread count changes the low bits, see DESIGN.md)."""
    sets = {**shrunk_overrides(corpus_root), **RUN_OVERRIDES, "seed": seed}
    cmd = [
        sys.executable,
        "-m",
        "rap.cli",
        "pretrain",
        "--params",
        str(PARAMS_YAML),
        "--out",
        str(out),
        "--max-steps",
        str(STEPS),
    ]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]  # JSON is YAML: the CLI parses it back
    env = {**os.environ, "RAP_TRACKING": "0", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out / "checkpoint.pt"


def _model_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]


def _inproc_pretrain(make_params, out: Path, seed: int) -> Path:
    with torch_threads(1):
        return pretrain.run(make_params({**RUN_OVERRIDES, "seed": seed}), out, max_steps=STEPS)


def test_pretraining_is_reproducible_and_seed_makes_a_different_run(
    make_params, corpus_root: Path, tmp_path: Path
) -> None:
    """Each seed runs twice from scratch: once in this process, once as ``rap pretrain --set
    seed=N`` in a fresh one; both runs of a seed write the same bytes, the seeds differ."""
    runs: dict[int, list[Path]] = {}
    for seed in (0, 1):
        runs[seed] = [
            _inproc_pretrain(make_params, tmp_path / f"seed{seed}-inproc", seed),
            _cli_pretrain(corpus_root, tmp_path / f"seed{seed}-cli", seed),
        ]
    outputs = {seed: [_run_outputs(ckpt.parent) for ckpt in ckpts] for seed, ckpts in runs.items()}
    assert {"checkpoint.pt", "loss.csv", "checkpoints/step-00000001.pt", "checkpoints/step-00000002.pt"} <= outputs[0][
        0
    ]["files"].keys()
    for seed in (0, 1):
        first, second = outputs[seed]
        assert first == second  # every file's bytes (checkpoints, loss.csv) and the summary's results

    w0, w1 = _model_tensors(runs[0][0]), _model_tensors(runs[1][0])
    assert w0.keys() == w1.keys()
    differing = [k for k in w0 if w0[k].is_floating_point() and not torch.equal(w0[k], w1[k])]
    assert len(differing) > len(w0) // 2  # another initialisation, not a few stray tensors
    assert outputs[0][0]["files"]["loss.csv"] != outputs[1][0]["files"]["loss.csv"]
    assert torch.load(runs[1][1], weights_only=False)["params"]["seed"] == 1


def test_deterministic_mode_setting(monkeypatch) -> None:
    from rap.training.determinism import deterministic_mode, seed_everything

    monkeypatch.delenv("RAP_DETERMINISTIC", raising=False)
    seed_everything(0)
    assert deterministic_mode() == "1" and torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
    monkeypatch.setenv("RAP_DETERMINISTIC", "sometimes")
    with pytest.raises(ValueError, match="RAP_DETERMINISTIC='sometimes'"):
        seed_everything(0)
