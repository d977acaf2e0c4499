"""Tracking against a real `mlflow server` (SQLite backend) on loopback, as a cluster run logs:
the server stops while `rap pretrain` is logging and comes back; the stages of one pipeline
(RAP_PIPELINE_RUN_ID) land under one parent; an evaluation started while the server is
unreachable spools everything and `rap tracking sync` delivers it. One server, started twice."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from rap.tracking_spool import SPOOL_FILE, Spool

from helpers.cli import REPO, rap_command, subprocess_env
from helpers.config import shrunk_overrides
from helpers.mlflow_server import MlflowServer, free_port

PIPELINE = "outage-test"
EXPERIMENT = "rap-outage"


def _wait(predicate, what: str, proc: subprocess.Popen | None = None, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"{what}: the process ended first (rc {proc.returncode}):\n{proc.stderr.read()[-4000:]}"
            )
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _csv_steps(out: Path) -> list[int]:
    path = out / "loss.csv"
    if not path.exists():
        return []
    return [int(line.split(",")[0]) for line in path.read_text().splitlines()[1:] if line]


def _spooled_metrics(path: Path) -> int:
    return sum(r["op"] == "metrics" for r in Spool(path).records())


@pytest.fixture()
def server(tmp_path: Path):
    srv = MlflowServer(tmp_path / "mlflow-server")
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


@pytest.mark.slow
def test_outage_spools_replays_and_groups_the_pipeline(server: MlflowServer, corpus_root: Path, tmp_path: Path):
    env = subprocess_env(
        RAP_TRACKING="1",
        MLFLOW_TRACKING_URI=server.uri,
        MLFLOW_EXPERIMENT_NAME=EXPERIMENT,
        RAP_PIPELINE_RUN_ID=PIPELINE,
        RAP_TRACKING_RETRY_S="1",
    )
    overrides = {**shrunk_overrides(corpus_root), "pretrain.optim.epochs": 20, "pretrain.optim.log_every": 1}
    out = tmp_path / "pretrain"
    cmd = rap_command("pretrain", "--out", str(out), "--max-steps", "16", overrides=overrides)
    log = tmp_path / "pretrain.log"  # a file, not a pipe: a full pipe would block training
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stderr=sink, stdout=sink)
    try:
        _wait(lambda: len(_csv_steps(out)) >= 3, "three logged steps", proc)
        server.stop()  # mid-run: the next MLflow call fails
        spool = out / SPOOL_FILE
        _wait(lambda: spool.exists() and _spooled_metrics(spool) >= 2, "metrics spooled while training goes on", proc)
        proc.send_signal(signal.SIGSTOP)  # hold training while the server restarts (no CPU spent)
        assert _csv_steps(out)[-1] < 16, "training ended during the outage: nothing left to replay live"
        server.start()
        proc.send_signal(signal.SIGCONT)
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = log.read_text()
    assert proc.returncode == 0, stderr[-4000:]
    assert stderr.count("training goes on; tracking records go to") == 1, stderr[-4000:]  # warned once
    assert "answers again" in stderr
    assert not (out / SPOOL_FILE).exists() and not list(out.glob("*rejected*"))

    client = mlflow.MlflowClient(server.uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    (pretrain_run,) = client.search_runs([exp.experiment_id], "tags.`rap.stage` = 'pretrain'")
    assert pretrain_run.info.status == "FINISHED"
    logged = sorted(m.step for m in client.get_metric_history(pretrain_run.info.run_id, "train/loss"))
    assert logged == _csv_steps(out) and len(logged) == 16  # no metric lost, none twice

    # an evaluation of the same pipeline while the server is unreachable: said before any work,
    # spooled, and delivered by `rap tracking sync` under the same parent
    eval_json = tmp_path / "eval" / "msrvtt.json"
    dead = {**env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    cmd = rap_command(
        "evaluate", "msrvtt", "--checkpoint", str(out / "checkpoint.pt"), "--out", str(eval_json), overrides=overrides
    )
    done = subprocess.run(cmd, env=dead, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    said, work = done.stderr.find("does not answer"), done.stderr.find("evaluating ")
    assert 0 <= said < work, done.stderr[-4000:]
    spool = eval_json.with_name(f"msrvtt.{SPOOL_FILE}")
    assert spool.exists() and eval_json.exists()
    sync = subprocess.run(
        [sys.executable, "-m", "rap.cli", "tracking", "sync", str(eval_json.parent), "--uri", server.uri],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert sync.returncode == 0, sync.stderr[-3000:]
    assert not spool.exists()

    runs = client.search_runs([exp.experiment_id], f"tags.`rap.pipeline_key` = 'id:{PIPELINE}'")
    parents = [r for r in runs if r.data.tags.get("rap.role") == "pipeline"]
    stages = {r.data.tags["rap.stage"]: r for r in runs if r.data.tags.get("rap.role") == "stage"}
    assert len(parents) == 1 and sorted(stages) == ["evaluate", "pretrain"]
    assert {r.data.tags["mlflow.parentRunId"] for r in stages.values()} == {parents[0].info.run_id}
    evaluation = stages["evaluate"]
    assert evaluation.info.status == "FINISHED" and parents[0].info.status == "FINISHED"
    metrics = json.loads(eval_json.read_text())
    assert evaluation.data.metrics["t2v_R1"] == metrics["t2v"]["R@1"]
    assert {a.path for a in client.list_artifacts(evaluation.info.run_id)} >= {"msrvtt.json", "msrvtt.run.json"}
