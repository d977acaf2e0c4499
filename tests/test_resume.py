"""Exact resume and the resume rules.

An interrupted pre-training run, resumed, ends with the SAME weights (torch.equal) as an
uninterrupted one - across an epoch boundary, with gradient accumulation, after a clean stop
(max_steps), after a crash, after SIGKILL of the real command followed by an edit that does
not shape training (rap/reports/), and after SIGTERM (preemption: a checkpoint at the next
step boundary). A rerun never deletes a run's files: a changed setting stops an interrupted
run with a message, ``--resume no`` moves it aside, a finished run is moved aside for the new
one. Everything random (dropout, ITM negatives, augmentation, source mix) is on.

CPU kernels are run single-threaded: some multi-threaded reductions are not bit-reproducible
run to run, which would hide what this test checks."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from rap.checkpoint_io import load_checkpoint
from rap.model import RaPModel
from rap.training import pretrain
from rap.training.resume import SET_ASIDE_DIR, ResumeConflict, code_digests, shaping_params

from helpers.cli import rap_command, subprocess_env
from helpers.config import REPO, shrunk_overrides

# 5 micro-batches per epoch, grad_accum 2 -> 3 optimiser steps per epoch (2 + 2 + 1), 2 epochs.
OVERRIDES = {"pretrain.optim.epochs": 2, "pretrain.optim.grad_accum": 2, "pretrain.optim.checkpoint_every": 2}
TOTAL_STEPS = 6


def _weights(path):
    return load_checkpoint(path)["model"]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ after resume, e.g. {different[:3]}"


def _losses(out):
    with (out / "loss.csv").open(newline="") as f:
        return [(r["step"], r["loss"]) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def straight(make_params, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAP_TRACKING", "0")
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            final = pretrain.run(make_params(OVERRIDES), out)
        finally:
            torch.set_num_threads(before)
    return out, _weights(final)


def test_resume_after_stop_equals_uninterrupted_run(make_params, straight, tmp_path, single_thread):
    params = make_params(OVERRIDES)
    out = tmp_path / "stopped"
    pretrain.run(params, out, max_steps=2)  # stops inside epoch 0 (step 2 of 3)
    assert load_checkpoint(out / "checkpoints" / "step-00000002.pt")["position"] == {
        "epoch": 0,
        "step_in_epoch": 2,
        "global_step": 2,
    }
    final = pretrain.run(params, out, resume=True)
    _assert_same(_weights(final), straight[1])
    assert _losses(out) == _losses(straight[0])  # the logged curve is identical too
    # the metrics file reproduces; provenance and timings live apart from it
    assert (out / "train_metrics.json").read_text() == (straight[0] / "train_metrics.json").read_text()
    assert "wall_time_s" in json.loads((out / "train_timings.json").read_text())


def test_resume_from_an_epoch_boundary_equals_uninterrupted_run(make_params, straight, tmp_path, single_thread):
    """A checkpoint written as an epoch ends (checkpoint_every = the 3 steps of an epoch; it
    does not shape training, so ``straight`` is the reference). This used to differ: each
    epoch's DataLoader drew its worker seed from the global torch RNG after the checkpoint
    in the uninterrupted run but before the restored RNG state in the resumed one."""
    params = make_params(OVERRIDES | {"pretrain.optim.checkpoint_every": 3})
    out = tmp_path / "boundary"
    pretrain.run(params, out, max_steps=3)
    assert load_checkpoint(out / "checkpoints" / "step-00000003.pt")["position"] == {
        "epoch": 1,
        "step_in_epoch": 0,
        "global_step": 3,
    }
    _assert_same(_weights(pretrain.run(params, out, resume=True)), straight[1])


def test_resume_after_crash_equals_uninterrupted_run(make_params, straight, tmp_path, monkeypatch, single_thread):
    params = make_params(OVERRIDES)
    out = tmp_path / "crashed"
    forward, calls = RaPModel.forward, {"n": 0}

    def crash_in_step_6(self, batch, **kw):
        calls["n"] += 1
        if calls["n"] == 10:  # micro-batch 10 = the last step's (2 micro-batches per step)
            raise RuntimeError("simulated kill")
        return forward(self, batch, **kw)

    with monkeypatch.context() as mp:
        mp.setattr(RaPModel, "forward", crash_in_step_6)
        with pytest.raises(RuntimeError, match="simulated kill"):
            pretrain.run(params, out)
    assert not (out / "checkpoint.pt").exists()
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pt")) == ["step-00000002.pt", "step-00000004.pt"]
    final = pretrain.run(params, out, resume="auto")  # the CLI default: from step 4 = epoch 1, step 1
    _assert_same(_weights(final), straight[1])
    assert load_checkpoint(final)["step"] == TOTAL_STEPS
    assert json.loads((out / "train_run.json").read_text())["resumed_from"].endswith("step-00000004.pt")


def test_changed_setting_stops_an_interrupted_run_and_no_moves_it_aside(make_params, tmp_path):
    """`--resume auto` never continues, nor silently drops, a run of another configuration."""
    out = tmp_path / "changed"
    pretrain.run(make_params(OVERRIDES), out, max_steps=2)
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    changed = make_params({**OVERRIDES, "lambda": 2.0})
    with pytest.raises(ResumeConflict) as err:
        pretrain.run(changed, out, resume="auto", max_steps=2)
    message = str(err.value)
    assert "parameter lambda: 1.0 -> 2.0" in message and "--resume force" in message and "--resume no" in message
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before  # nothing touched

    pretrain.run(changed, out, resume="no", max_steps=2)
    aside = list((out / SET_ASIDE_DIR).iterdir())
    assert len(aside) == 1 and aside[0].name.endswith("-step-2")
    assert sorted(p.name for p in (aside[0] / "checkpoints").iterdir()) == before
    assert json.loads((out / "train_run.json").read_text())["resumed_from"] is None


def test_a_finished_run_is_moved_aside_for_a_new_setting(make_params, tmp_path):
    out = tmp_path / "finished"
    small = {**OVERRIDES, "pretrain.optim.epochs": 1}
    pretrain.run(make_params(small), out)
    pretrain.run(make_params({**small, "lambda": 0.5}), out, resume="auto")  # dvc exp run -S lambda=0.5
    (aside,) = (out / SET_ASIDE_DIR).iterdir()
    assert (aside / "checkpoint.pt").is_file() and (aside / "checkpoints").is_dir()
    assert load_checkpoint(out / "checkpoint.pt")["params"]["lambda"] == 0.5


def test_what_shapes_training(make_params):
    """Logging cadence, workers, paths and other stages' blocks do not shape pre-training;
    the loss, data and schedule do; rap/reports and the CLI are not training code."""
    base = shaping_params(make_params(), "pretrain")
    assert (
        shaping_params(
            make_params(
                {
                    "pretrain.optim.log_every": 7,
                    "data.num_workers": 3,
                    "finetune.optim.lr": 0.5,
                    "evaluate.itm_rerank_k": 3,
                }
            ),
            "pretrain",
        )
        == base
    )
    assert shaping_params(make_params({"lambda": 2.0}), "pretrain") != base
    assert shaping_params(make_params({"pretrain.optim.lr": 0.5}), "pretrain") != base
    ft = shaping_params(make_params(), "finetune-msvd")
    assert (
        shaping_params(
            make_params({"pretrain.optim.lr": 0.5, "finetune.epochs": {"msrvtt-7k": 9, "msrvtt-9k": 1, "msvd": 3}}),
            "finetune-msvd",
        )
        == ft
    )  # only its own task's epochs
    assert shaping_params(make_params({"lambda": 2.0}), "finetune-msvd") != ft  # sets finetune.loss.racl_lambda
    code = code_digests("pretrain")
    assert "losses.py" in code and "data/transforms.py" in code and "training/loop.py" in code
    assert not any(k.startswith("reports/") or k in ("cli.py", "tracking.py") for k in code)
    assert "evaluation.py" in code_digests("finetune-msvd") and "evaluation.py" not in code


# --------------------------------------------------------------------------------------
# The real command, killed
# --------------------------------------------------------------------------------------

CLI_OVERRIDES = {
    **OVERRIDES,
    "pretrain.optim.epochs": 2,
    "pretrain.optim.grad_accum": 1,
    "pretrain.optim.checkpoint_every": 2,
    "pretrain.optim.log_every": 1,
}  # 10 steps


def _command(corpus_root: Path, out: Path) -> list[str]:
    return rap_command("pretrain", "--out", str(out), overrides={**shrunk_overrides(corpus_root), **CLI_OVERRIDES})


def _env(package_root: Path) -> dict[str, str]:
    return subprocess_env(package_root)


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory) -> Path:
    """A copy of the rap package that a test may edit (the checkout stays untouched)."""
    root = tmp_path_factory.mktemp("pkg")
    shutil.copytree(REPO / "rap", root / "rap", ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.fixture(scope="module")
def cli_straight(corpus_root, package_copy, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli-straight")
    subprocess.run(_command(corpus_root, out), env=_env(package_copy), check=True, capture_output=True, timeout=600)
    return out


def _start_and_wait_for(cmd, env, path: Path, timeout: float = 300.0) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(
                f"the run ended ({proc.returncode}) before {path} appeared:\n{proc.stderr.read()[-3000:]}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)
    return proc


@pytest.mark.slow
def test_sigkill_then_an_edit_to_reports_then_the_same_command_resumes(
    corpus_root, package_copy, cli_straight, tmp_path
):
    out = tmp_path / "killed"
    cmd, env = _command(corpus_root, out), _env(package_copy)
    proc = _start_and_wait_for(cmd, env, out / "checkpoints" / "step-00000004.pt")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (out / "checkpoint.pt").exists(), "the run finished before it was killed: make it longer"
    tables = package_copy / "rap" / "reports" / "tables.py"
    tables.write_text(tables.read_text() + "\n# an edit that does not shape training\n")

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stderr
    _assert_same(_weights(out / "checkpoint.pt"), _weights(cli_straight / "checkpoint.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGURG])  # preemption; the SLURM profile's --signal
def test_stop_signal_writes_a_checkpoint_and_the_rerun_resumes(
    signum, corpus_root, package_copy, cli_straight, tmp_path
):
    out = tmp_path / "preempted"
    cmd, env = _command(corpus_root, out), _env(package_copy)
    proc = _start_and_wait_for(cmd, env, out / "checkpoints" / "step-00000002.pt")
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, stderr[-3000:]
    assert f"stopped by {signal.Signals(signum).name}" in stderr and "rerun the same command to resume" in stderr
    latest = sorted((out / "checkpoints").glob("*.pt"))[-1]
    stopped_at = load_checkpoint(latest)["position"]
    assert 2 < stopped_at["global_step"] < 10, stopped_at  # at a step boundary after the signal, not the end
    assert not (out / "checkpoint.pt").exists()

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same(_weights(out / "checkpoint.pt"), _weights(cli_straight / "checkpoint.pt"))
    print(f"SIGTERM stop at {stopped_at}")


# --------------------------------------------------------------------------------------
# The real command: one writer per directory, a damaged newest checkpoint
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_one_writer_per_directory_then_a_truncated_newest_checkpoint_falls_back(
    corpus_root, package_copy, cli_straight, tmp_path
):
    """Two `rap pretrain` on one --out: the second refuses at once, naming the holder; the
    first finishes (at --max-steps 6) with each step logged once. Then its newest step
    checkpoint is cut short (a partial copy): the rerun moves it aside (kept), resumes from the
    one before and ends with the uninterrupted run's weights."""
    out = tmp_path / "shared"
    cmd, env = _command(corpus_root, out), _env(package_copy)
    first = _start_and_wait_for([*cmd, "--max-steps", "6"], env, out / "rap.lock")
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 1, second.stderr[-3000:]
    assert "RunLocked" in second.stderr and "Traceback" not in second.stderr
    assert "still runs on this host: pretrain on host" in second.stderr and f"pid {first.pid}" in second.stderr
    _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-3000:]
    assert [int(step) for step, _ in _losses(out)] == list(range(1, 7))  # each step logged once
    assert not (out / "rap.lock").exists()  # released at exit

    newest = out / "checkpoints" / "step-00000006.pt"
    cut = newest.read_bytes()[: newest.stat().st_size // 2]
    newest.write_bytes(cut)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"step checkpoint {newest} cannot be used" in done.stderr and "sha256" in done.stderr
    assert "resumed from" in done.stderr and "step-00000004.pt at epoch 0, step 4" in done.stderr
    (kept,) = (out / SET_ASIDE_DIR).glob("*-damaged/step-00000006.pt")
    assert kept.read_bytes() == cut and (kept.parent / "step-00000006.pt.sha256").is_file()
    _assert_same(_weights(out / "checkpoint.pt"), _weights(cli_straight / "checkpoint.pt"))
    assert [int(step) for step, _ in _losses(out)] == list(range(1, 11))
