"""Loading never runs code, and a resume continues from the newest checkpoint that loads.

A checkpoint whose pickle would run a shell command (``__reduce__`` -> ``os.system``) is
refused by every way rap loads checkpoints: the real ``rap evaluate`` command stops with a
message naming the file and the refused call, no traceback, and the command never ran. The
fallback rules of rap.training.resume run on step checkpoint files written as the loop writes
them (the real command on a truncated checkpoint is in tests/test_resume.py)."""

from __future__ import annotations

import os
import random
import subprocess

import numpy as np
import pytest
import torch

from rap.checkpoint_io import DamagedCheckpoint, UnsafeCheckpoint, atomic_save, load_checkpoint
from rap.training.checkpoint import capture_rng_state, digest_path, restore_rng_state, save_step_checkpoint
from rap.training.resume import SET_ASIDE_DIR, ResumeConflict, plan_start

from helpers.cli import rap_command, subprocess_env
from helpers.config import REPO, shrunk_overrides


class _RunsAShellCommand:
    """What a malicious checkpoint holds: unpickling it calls ``os.system``."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious_checkpoint(path, marker):
    torch.save({"model": {"w": torch.zeros(2)}, "params": _RunsAShellCommand(marker)}, path)
    return path


def test_a_malicious_pickle_is_refused_by_rap_evaluate_and_runs_nothing(corpus_root, tmp_path):
    marker = tmp_path / "pwned"
    evil = _malicious_checkpoint(tmp_path / "downloaded.pt", marker)
    cmd = rap_command(
        "evaluate", "msrvtt", "--checkpoint", str(evil), "--out", str(tmp_path / "m.json"),
        overrides=shrunk_overrides(corpus_root),
    )  # fmt: skip
    done = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert f"UnsafeCheckpoint: refused to load {evil}" in done.stderr and "posix.system" in done.stderr
    assert not marker.exists()
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "m.json.lock").exists()


def _step_state(step: int, total: int = 10) -> dict:
    """A step checkpoint as the loop writes one (the model and RNG entries that matter here)."""
    return {
        "stage": "pretrain",
        "model": {"w": torch.full((3,), float(step))},
        "rng": [capture_rng_state()],
        "position": {"epoch": 0, "step_in_epoch": step, "global_step": step},
        "shaping": {"params": {"lambda": 1.0}, "code": {}},
        "total_steps": total,
    }


def _plan(out, mode="auto"):
    return plan_start(out, "pretrain", {"lambda": 1.0}, {}, mode)


def _write_steps(out, steps):
    paths = [save_step_checkpoint(_step_state(s), out / "checkpoints" / f"step-{s:08d}.pt") for s in steps]
    return paths


def test_a_malicious_step_checkpoint_stops_the_resume_and_stays_where_it_is(tmp_path):
    marker = tmp_path / "pwned"
    (older,) = _write_steps(tmp_path, [2])
    evil = _malicious_checkpoint(tmp_path / "checkpoints" / "step-00000004.pt", marker)
    with pytest.raises(
        UnsafeCheckpoint, match=f"refused to load {evil}: its pickle asks to call or build posix.system"
    ):
        _plan(tmp_path)
    assert not marker.exists() and evil.is_file() and older.is_file()


def test_rng_states_round_trip_through_a_weights_only_load(tmp_path):
    random.seed(3), np.random.seed(4), torch.manual_seed(5), np.random.normal()  # a cached gaussian too
    atomic_save({"model": {}, "rng": capture_rng_state()}, tmp_path / "c.pt")
    expected = (random.random(), np.random.normal(), np.random.random(), torch.rand(3))
    restore_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    again = (random.random(), np.random.normal(), np.random.random(), torch.rand(3))
    assert expected[:3] == again[:3] and torch.equal(expected[3], again[3])


def test_an_earlier_rap_versions_numpy_rng_state_still_loads(tmp_path):
    """Step checkpoints written before the plain-type RNG states hold numpy's state as an array:
    explicitly allowlisted (numpy's array reconstruction only)."""
    np.random.seed(7)
    torch.save({"model": {}, "rng": {"numpy": np.random.get_state()}}, tmp_path / "old.pt")
    state = load_checkpoint(tmp_path / "old.pt")["rng"]["numpy"]
    expected = np.random.random()
    np.random.set_state(state)
    assert np.random.random() == expected


def test_the_newest_checkpoint_that_loads_is_resumed_and_the_damaged_ones_are_kept(tmp_path):
    _, step4, step6, step8 = _write_steps(tmp_path, [2, 4, 6, 8])
    step8.write_bytes(step8.read_bytes()[:1000])  # cut short: fails its recorded sha256
    digest_path(step6).unlink()  # no record (killed between the two writes): loading tells
    step6.write_bytes(step6.read_bytes()[: step6.stat().st_size - 100])
    plan = _plan(tmp_path)
    assert plan.checkpoint == step4 and not plan.set_aside
    (aside,) = (tmp_path / SET_ASIDE_DIR).iterdir()
    assert aside.name.endswith("-damaged")
    assert sorted(p.name for p in aside.iterdir()) == [
        "step-00000006.pt",
        "step-00000008.pt",
        "step-00000008.pt.sha256",
    ]
    assert (aside / "step-00000008.pt").stat().st_size == 1000


def test_when_no_checkpoint_loads_auto_stops_and_no_starts_afresh(tmp_path):
    (step2,) = _write_steps(tmp_path, [2])
    step2.write_bytes(b"not a checkpoint")
    with pytest.raises(ResumeConflict, match="no step checkpoint in .* loads, nothing was moved") as stop:
        _plan(tmp_path)
    assert "sha256" in str(stop.value) and "--resume no" in str(stop.value)
    assert step2.is_file()
    plan = _plan(tmp_path, "no")
    assert plan.checkpoint is None and plan.set_aside
    with pytest.raises(DamagedCheckpoint, match="cannot read checkpoint"):
        load_checkpoint(step2)
