"""The paper-scale download path for real, against a loopback server (tests/helpers/loopback.py):
WebVid through rap's shard fetcher, CC3M through img2dataset in its own venv, run by `dvc repro`
and the Snakemake workflow on a tiny paper-format config (data.source public) up to extraction.
Checks: the success rate and the manifest; dead links recorded, not fatal; a rerun fetches
nothing; --retry-failed fetches exactly the failures; below min_success both engines stop with
the message naming rate, threshold and status file. Nothing leaves 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from helpers import loopback
from helpers.snakemake import run_snakemake

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
GOOD_VIDEOS, GOOD_IMAGES = 7, 5  # plus one item per fault (404, 500, truncated, text, slow) each


def _params(path: Path, server: loopback.Loopback, *, webvid_min: float) -> None:
    """params.yaml at the paper scale, shrunk to downloads + extraction of the loopback lists."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw["scale"] = "paper"
    data = raw["paper"]["data"]
    data.update(image_size=48, num_workers=0, store_fps=2.0)  # 96x64 clips are resized to 72x48 at download
    data["fetch"] = {
        "processes": 1,
        "threads": 4,
        "shard_size": 4,
        "timeout_s": 1,
        "retries": 1,
    }  # 2: tests/test_data_download.py
    data["fetch"]["cc3m_tool"] = "img2dataset"
    data["webvid"] = {"min_success": webvid_min, "list_url": server.url("webvid.csv")}
    data["cc3m"] = {"min_success": 0.4, "list_url": server.url("cc3m.tsv")}
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")


def _project(dst: Path) -> Path:
    """A DVC project holding this checkout's code and dvc.yaml."""
    shutil.copytree(REPO / "rap", dst / "rap", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "dvc.yaml", dst / "dvc.yaml")
    return dst


def _env() -> dict[str, str]:
    tools = REPO / ".tools" / "img2dataset"  # the checkout's tool venv (made once, git-ignored)
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "RAP_TRACKING": "0"}
    env.update(DVC_NO_ANALYTICS="1", OMP_NUM_THREADS="1", RAP_IMG2DATASET_VENV=str(tools))
    env.pop("DVC_STAGE", None)
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str], ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd, cwd=cwd, env={**env, "PYTHONPATH": str(cwd)}, capture_output=True, text=True, timeout=900
    )
    if ok:
        assert proc.returncode == 0, (
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def _media_requests(server: loopback.Loopback, prefix: str) -> list[str]:
    return [p for p in server.requests if p.startswith(f"/{prefix}")]


def _check_arrived(data: Path, server: loopback.Loopback, dataset: str, n_good: int, n_listed: int) -> None:
    entries = [json.loads(line) for line in (data / "manifest" / f"{dataset}.jsonl").read_text().splitlines()]
    assert {e["key"] for e in entries} == server.expected_ok[dataset]
    assert all(e["digest"].startswith("sha256:") and (data / e["path"]).is_file() for e in entries)
    status = pq.read_table(data / "raw" / dataset / "status.parquet").to_pylist()
    assert len(status) == n_listed
    assert {r["url"] for r in status if r["status"] == "failed"} == server.failed_urls[dataset]
    kept = [r for r in status if r["status"] == "success"]
    assert len(kept) == n_good and all(min(r["width"], r["height"]) <= 48 for r in kept)  # resized at download
    index = (data / "index" / f"{dataset}.jsonl").read_text().splitlines()
    assert len(index) == n_good  # extraction ran on what arrived, and on nothing else


@pytest.mark.slow
def test_loopback_downloads_through_dvc_and_snakemake(tmp_path):
    server = loopback.serve_lists(tmp_path / "lists", n_good_videos=GOOD_VIDEOS, n_good_images=GOOD_IMAGES, slow_s=2.5)
    env = _env()
    n_faults = len(loopback.FAULTS)
    try:
        # --- DVC: below the threshold the pipeline stops at the download, with the message
        proj = _project(tmp_path / "dvc")
        _run(["git", "init", "-q"], proj, env)
        _run(["dvc", "init", "-q"], proj, env)
        _params(proj / "params.yaml", server, webvid_min=0.9)
        failed = _run(["dvc", "repro", "extract@webvid", "extract@cc3m"], proj, env, ok=False)
        out = failed.stdout + failed.stderr
        assert failed.returncode != 0
        assert "only 58.33% of 12 items arrived, below data.webvid.min_success = 90.00%" in out, out[-3000:]
        assert str(Path("data/raw/webvid/status.parquet")) in out
        assert not (proj / "data/manifest/webvid.jsonl").exists()

        # --- at the threshold it goes on to extraction; the rerun of webvid fetches nothing
        videos_before = len(_media_requests(server, "v"))
        _params(proj / "params.yaml", server, webvid_min=0.5)
        done = _run(["dvc", "repro", "extract@webvid", "extract@cc3m"], proj, env)
        assert len(_media_requests(server, "v")) == videos_before
        assert "success rate 58.33%" in done.stdout, done.stdout[-4000:]
        # DVC orders the two downloads as it likes: cc3m's may have run (and passed) before webvid's stop
        assert "cc3m: 5 of 10 items arrived: success rate 50.00%" in out + done.stdout, (out + done.stdout)[-4000:]
        assert "published-size check: webvid/train: 7 items arrived, published 2,500,000" in done.stdout
        _check_arrived(proj / "data", server, "webvid", GOOD_VIDEOS, GOOD_VIDEOS + n_faults)
        _check_arrived(proj / "data", server, "cc3m", GOOD_IMAGES, GOOD_IMAGES + n_faults)

        # --- the CLI: a rerun fetches nothing; --retry-failed fetches the failures and only them
        for dataset, prefix in (("webvid", "v"), ("cc3m", "i")):
            before = len(server.requests)
            _run([str(VENV_BIN / "rap"), "download", dataset], proj, env)
            assert len(server.requests) == before, f"{dataset}: a rerun fetched {server.requests[before:]}"
            _run([str(VENV_BIN / "rap"), "download", dataset, "--retry-failed"], proj, env)
            asked = {server.base + p for p in server.requests[before:]}
            assert asked == server.failed_urls[dataset], dataset

        # --- Snakemake: the same stop below the threshold, then extraction
        work = tmp_path / "smk"
        work.mkdir()
        _params(work / "params.yaml", server, webvid_min=0.9)
        target = "data/index/webvid.jsonl"
        proc = run_snakemake(work, "--cores", "2", target, env={"RAP_TRACKING": "0"})
        assert proc.returncode != 0
        log = (work / "logs/download/webvid.log").read_text()
        assert "below data.webvid.min_success = 90.00%" in log and "status.parquet" in log, log[-2000:]
        _params(work / "params.yaml", server, webvid_min=0.5)
        videos_before = len(_media_requests(server, "v"))
        proc = run_snakemake(work, "--cores", "2", target, env={"RAP_TRACKING": "0"})
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert len(_media_requests(server, "v")) == videos_before  # the failed job's fetches are kept
        assert len((work / target).read_text().splitlines()) == GOOD_VIDEOS
    finally:
        server.close()
