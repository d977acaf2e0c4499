"""The data on another filesystem (a cluster's scratch space), seen by DVC experiments run in
temporary workspaces: `data` is a symlink committed to git (``/data/`` in .gitignore matches
only a folder), so `dvc exp run --temp` / `--queue`, which check the commit out elsewhere and
copy nothing that git does not track, find the manifests, indexes and frames where they are and
neither download nor extract again. The control: with `data` a plain folder, the same
experiment downloads and extracts anew. Real DVC on the real dvc.yaml, one small dataset."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from test_pipeline import _run, _stages_run, copy_repo

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
TARGET = "extract@msrvtt"
DATA_STAGES = {"download@msrvtt", "extract@msrvtt"}


def _stamps(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _temp_experiment(repo: Path, env: dict[str, str]) -> set[str]:
    """A temporary-workspace experiment on the data target, changing a knob data does not read."""
    return _stages_run(_run(["dvc", "exp", "run", "--temp", "-S", "seed=1", TARGET], repo, env))


def test_temp_experiments_reuse_data_on_another_filesystem(tmp_path):
    repo, scratch = tmp_path / "rap", tmp_path / "scratch" / "rap-data"
    scratch.mkdir(parents=True)
    env = copy_repo(repo, RAP_TRACKING="0")
    os.symlink(scratch, repo / "data")
    _run(["git", "add", "-A"], repo, env)
    assert "data" in _run(["git", "ls-files", "data"], repo, env).split()  # the link itself is committed
    _run(["git", "commit", "-qm", "data on scratch"], repo, env)
    assert _stages_run(_run(["dvc", "repro", TARGET], repo, env)) == DATA_STAGES
    assert (scratch / "index" / "msrvtt.jsonl").is_file() and any((scratch / "frames" / "msrvtt").rglob("*.npy"))
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "data stages run"], repo, env)
    before = _stamps(scratch)

    assert _temp_experiment(repo, env) == set()  # neither downloaded nor extracted again
    assert _stamps(scratch) == before

    # the control: `data` a plain folder (git-ignored): the temporary workspace has no data
    (repo / "data").unlink()
    shutil.copytree(scratch, repo / "data", symlinks=True)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "data in the repository"], repo, env)
    assert _temp_experiment(repo, env) == DATA_STAGES
