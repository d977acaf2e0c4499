"""MLflow tracking against a throw-away SQLite store (never the repo's mlflow.db, never the UI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest

from rap import tracking
from rap.config import load_params

from helpers.mlflow_search import search_runs

REPO = Path(__file__).resolve().parents[1]
ENV_VARS = (
    "RAP_TRACKING",
    "RAP_PIPELINE_RUN_ID",
    "DVC_EXP_NAME",
    "DVC_EXP_BASELINE_REV",
    "DVC_STAGE",
    "DVC_ROOT",
    "RANK",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_RUN_ID",
)


@pytest.fixture(scope="module")
def db_dir(tmp_path_factory):
    """One database for the module: creating MLflow's schema costs seconds per database."""
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture()
def store(db_dir, request, monkeypatch):
    """The shared database with a fresh experiment per test (isolates the searches)."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    uri = f"sqlite:///{db_dir / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", request.node.name)
    yield uri
    while mlflow.active_run() is not None:  # a failing test must not leak an open run
        mlflow.end_run()


@pytest.fixture()
def fresh_store(tmp_path, store, monkeypatch):
    """A database path nobody has touched: for checking that nothing gets created."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path / "mlflow.db"


@pytest.fixture(scope="module")
def params():
    return load_params(REPO / "params.yaml")


def _runs(uri: str):
    return search_runs(uri, os.environ["MLFLOW_EXPERIMENT_NAME"], order_by=["attributes.start_time ASC"])


def test_parent_and_two_nested_stages(store, params, monkeypatch, tmp_path, db_dir):
    monkeypatch.setenv("RAP_PIPELINE_RUN_ID", "pipe-1")
    monkeypatch.setenv("DVC_EXP_NAME", "exp-lambda2")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc123")
    monkeypatch.setenv("DVC_STAGE", "pretrain")
    with tracking.stage_run("pretrain", params, tags={"extra": 7}) as run:
        assert run and run.info.run_id == tracking._current().run_id
        tracking.log_metrics({"loss": 1.5}, step=3)
    monkeypatch.setenv("DVC_STAGE", "evaluate@msrvtt")
    with tracking.stage_run("evaluate", params):
        tracking.log_metrics({"t2v": {"R@1": 40.0, "MdR": 2.0}, "v2t": {"R@1": 50.0}})
        artifact = tmp_path / "metrics.json"
        artifact.write_text("{}")
        tracking.log_artifact(artifact)
    assert mlflow.active_run() is None

    runs = _runs(store)
    assert len(runs) == 3
    parent = runs[runs["tags.rap.role"] == "pipeline"]
    assert len(parent) == 1
    parent_id = parent["run_id"].iloc[0]
    assert parent["tags.rap.pipeline_key"].iloc[0] == "id:pipe-1"
    assert parent["status"].iloc[0] == "FINISHED"
    children = runs[runs["tags.rap.role"] == "stage"].set_index("tags.rap.stage")
    assert sorted(children.index) == ["evaluate", "pretrain"]
    assert (children["tags.mlflow.parentRunId"] == parent_id).all()
    assert children.loc["pretrain", "tags.mlflow.runName"] == "pretrain"
    assert children.loc["evaluate", "tags.mlflow.runName"] == "evaluate@msrvtt"
    assert children.loc["evaluate", "tags.rap.dvc_stage"] == "evaluate@msrvtt"
    assert children.loc["pretrain", "tags.extra"] == "7"
    for name in ("pretrain", "evaluate"):
        row = children.loc[name]
        assert row["status"] == "FINISHED"
        assert row["tags.rap.dvc_exp_name"] == "exp-lambda2"
        assert row["tags.rap.dvc_exp_baseline_rev"] == "abc123"
        assert row["tags.rap.scale"] == "embedded"
        assert len(row["tags.rap.git_rev"]) in (40, len("unknown"))
        assert row["tags.rap.git_dirty"] in ("true", "false", "unknown")
        # the resolved config, flattened
        assert row["params.scale"] == "embedded"
        assert float(row["params.pretrain.loss.racl_lambda"]) == params.cfg.pretrain.loss.racl_lambda
        assert row["params.model.embed_dim"] == str(params.cfg.model.embed_dim)
    assert children.loc["pretrain", "metrics.loss"] == 1.5
    assert children.loc["evaluate", "metrics.t2v_R1"] == 40.0
    assert children.loc["evaluate", "metrics.t2v_MdR"] == 2.0
    assert children.loc["evaluate", "metrics.v2t_R1"] == 50.0
    # artifacts land under mlartifacts/ next to the database
    client = mlflow.MlflowClient(store)
    exp = client.get_experiment_by_name("test_parent_and_two_nested_stages")
    assert exp.artifact_location == (db_dir / "mlartifacts" / exp.name).as_uri()
    run_id = children.loc["evaluate", "run_id"]
    assert [f.path for f in client.list_artifacts(run_id)] == ["metrics.json"]
    assert (db_dir / "mlartifacts" / exp.name / run_id / "artifacts" / "metrics.json").is_file()


def test_parent_reused_by_key_and_new_key_new_parent(store, monkeypatch):
    monkeypatch.setenv("RAP_PIPELINE_RUN_ID", "A")
    with tracking.stage_run("download"):
        pass
    monkeypatch.setenv("RAP_PIPELINE_RUN_ID", "B")
    with tracking.stage_run("download"):
        pass
    monkeypatch.setenv("RAP_PIPELINE_RUN_ID", "A")
    with tracking.stage_run("extract"):
        pass
    runs = _runs(store)
    parents = runs[runs["tags.rap.role"] == "pipeline"].set_index("tags.rap.pipeline_key")
    assert sorted(parents.index) == ["id:A", "id:B"]
    children = runs[runs["tags.rap.role"] == "stage"]
    under_a = children[children["tags.mlflow.parentRunId"] == parents.loc["id:A", "run_id"]]
    assert sorted(under_a["tags.rap.stage"]) == ["download", "extract"]


def test_parent_found_from_another_process(store, monkeypatch):
    """DVC runs every stage as its own process: the second process must join the parent."""
    monkeypatch.setenv("RAP_PIPELINE_RUN_ID", "cross-process")
    with tracking.stage_run("pretrain"):
        pass
    code = textwrap.dedent("""
        from rap import tracking
        with tracking.stage_run("finetune") as run:
            tracking.log_metrics({"t2v": {"R@5": 12.5}})
    """)
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ), cwd=REPO, timeout=120)
    runs = _runs(store)
    parents = runs[runs["tags.rap.role"] == "pipeline"]
    assert len(parents) == 1
    child = runs[runs["tags.rap.stage"] == "finetune"]
    assert child["tags.mlflow.parentRunId"].iloc[0] == parents["run_id"].iloc[0]
    assert child["metrics.t2v_R5"].iloc[0] == 12.5


def test_failed_stage_marks_child_and_parent_failed(store, monkeypatch):
    monkeypatch.setenv("RAP_PIPELINE_RUN_ID", "fails")
    with pytest.raises(RuntimeError, match="boom"):
        with tracking.stage_run("pretrain"):
            raise RuntimeError("boom")
    assert mlflow.active_run() is None
    runs = _runs(store).set_index("tags.rap.role")
    assert runs.loc["stage", "status"] == "FAILED"
    assert runs.loc["pipeline", "status"] == "FAILED"


def test_stage_inside_stage_nests_under_the_open_run(store, monkeypatch):
    monkeypatch.setenv("RAP_PIPELINE_RUN_ID", "nest")
    with tracking.stage_run("finetune") as outer:
        with tracking.stage_run("evaluate") as inner:
            assert tracking._current().run_id == inner.info.run_id
        assert tracking._current().run_id == outer.info.run_id
    runs = _runs(store).set_index("tags.rap.stage")
    assert runs.loc["evaluate", "tags.mlflow.parentRunId"] == outer.info.run_id


def test_disabled_tracking_is_a_no_op(fresh_store, monkeypatch):
    monkeypatch.setenv("RAP_TRACKING", "0")
    with tracking.stage_run("pretrain") as run:
        assert not run and run.info.run_id is None
        tracking.log_metrics({"t2v": {"R@1": 1.0}})
        tracking.log_text("hello", "note.txt")
    assert mlflow.active_run() is None
    assert not fresh_store.exists()


def test_only_rank_zero_logs(fresh_store, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with tracking.stage_run("pretrain") as run:
        assert not run
    assert not fresh_store.exists()


def test_log_outside_a_stage_does_not_create_runs(fresh_store):
    tracking.log_metrics({"loss": 1.0})
    assert mlflow.active_run() is None
    assert not fresh_store.exists()


def test_bad_tracking_flag(store, monkeypatch):
    monkeypatch.setenv("RAP_TRACKING", "maybe")
    with pytest.raises(ValueError, match="RAP_TRACKING"):
        tracking.tracking_enabled()


def test_metric_names_are_sanitised():
    assert tracking.flatten_metrics({"t2v": {"R@1": 1, "MdR": 2.5}, "loss": 0.5}) == {
        "t2v_R1": 1.0,
        "t2v_MdR": 2.5,
        "loss": 0.5,
    }
    assert tracking.metric_name("a:b c/d") == "a_b c/d"
    assert tracking.metric_name("//x//y/") == "x/y"
    assert tracking.metric_name("x/../y") == "x/_/y"
    with pytest.raises(TypeError, match="'t2v_R@1'"):
        tracking.flatten_metrics({"t2v": {"R@1": "high"}})
    with pytest.raises(TypeError, match="'flag'"):
        tracking.flatten_metrics({"flag": True})


def test_long_param_values_are_truncated(store, monkeypatch):
    monkeypatch.setenv("RAP_PIPELINE_RUN_ID", "long")
    with tracking.stage_run("pretrain"):
        tracking.log_params({"long": "x" * 10_000, "tuple": (1, 2)})
    row = _runs(store).set_index("tags.rap.role").loc["stage"]
    assert len(row["params.long"]) == tracking.MAX_PARAM_VALUE
    assert row["params.tuple"] == "(1, 2)"


def test_pipeline_key_precedence(monkeypatch):
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(tracking, "_runner_ancestor", lambda: None)
    rev, dirty = tracking.git_state()
    assert tracking.pipeline_key().startswith(f"manual:{rev[:12]}")
    monkeypatch.setattr(tracking, "_runner_ancestor", lambda: "dvc:42:1700000000")
    assert tracking.pipeline_key() == "dvc:42:1700000000"
    monkeypatch.setenv("DVC_EXP_NAME", "e1")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "r0")
    assert tracking.pipeline_key() == "dvc-exp:e1@r0"
    monkeypatch.setenv("RAP_PIPELINE_RUN_ID", "ci-7")
    assert tracking.pipeline_key() == "id:ci-7"


def test_runner_ancestor_is_found(tmp_path):
    """A stage launched (through a shell) by a program called ``dvc`` sees it as its runner."""
    fake_dvc = tmp_path / "dvc"
    fake_dvc.write_text(
        f"#!{sys.executable}\nimport subprocess, sys\nsys.exit(subprocess.run(['sh', '-c', sys.argv[1]]).returncode)\n"
    )
    fake_dvc.chmod(0o755)
    probe = f"{sys.executable} -c 'from rap.tracking import _runner_ancestor; print(_runner_ancestor())'"
    out = subprocess.run(
        [str(fake_dvc), probe], capture_output=True, text=True, check=True, cwd=REPO, timeout=60
    ).stdout.strip()
    name, pid, start = out.split(":")
    assert name == "dvc" and int(pid) > 0 and int(start) > 0


def test_default_store_is_the_pipeline_repository(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)
    (repo / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(repo / "sub")
    assert tracking.repo_root() == repo
    assert tracking.tracking_uri() == f"sqlite:///{repo / 'mlflow.db'}"
    # a `dvc exp run --temp` workspace is deleted afterwards: log into the repository it belongs to
    temp_ws = repo / ".dvc" / "tmp" / "exps" / "tmpab12"
    temp_ws.mkdir(parents=True)
    (temp_ws / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.setenv("DVC_ROOT", str(temp_ws))
    assert tracking.repo_root() == repo
    assert tracking._artifact_location(tracking.tracking_uri(), "rap") == (repo / "mlartifacts" / "rap").as_uri()


def test_ablation_evaluation_carries_the_checkpoints_knobs_and_its_training_run(
    store, make_params, tmp_path, single_thread
):
    """The run that scores runs/ablation/lambda-2.0/checkpoint.pt logs lambda = 2.0 (not the
    evaluate command's 1.0) and links to the training run that wrote the file, so MLflow's
    compare view can plot R@1 against lambda; the experiment opens in the model-training view."""
    from rap.config import ablation_overrides
    from rap.evaluation import run_evaluation
    from rap.training import pretrain

    main = make_params({"evaluate.itm_rerank_k": 0})
    ablation = make_params({**ablation_overrides("lambda-2.0"), "evaluate.itm_rerank_k": 0})
    checkpoint = pretrain.run(ablation, tmp_path / "ablation" / "lambda-2.0", max_steps=1)
    run_evaluation(main, "msrvtt", "test", checkpoint, tmp_path / "eval" / "lambda-2.0.json")

    runs = _runs(store)
    train_run = runs[runs["tags.rap.stage"] == "pretrain"].iloc[0]
    eval_run = runs[runs["tags.rap.stage"] == "evaluate"].iloc[0]
    assert eval_run["params.lambda"] == "2.0" and train_run["params.lambda"] == "2.0"
    assert eval_run["params.racl"] == "both" and eval_run["params.frames"] == "4"
    assert eval_run["params.pretrain.loss.racl_variant"] == "paper" and eval_run["params.seed"] == "0"
    assert eval_run["params.evaluate.itm_rerank_k"] == "0"  # and what the evaluation itself ran with
    assert eval_run[f"tags.{tracking.TRAINED_BY_TAG}"] == train_run.run_id
    assert eval_run["metrics.t2v_R1"] >= 0
    assert eval_run["params.racl_weight_grad"] == "True" and eval_run["params.racl_variant"] == "paper"
    # the embedded corpus has a ground truth: where the weights point is logged beside R@K
    scores = json.loads((tmp_path / "eval" / "lambda-2.0.json").read_text())["localisation"]
    assert eval_run["metrics.localisation_patch_paper_auc"] == pytest.approx(scores["patch"]["paper"]["auc"])
    assert 0 <= eval_run["metrics.localisation_token_official_auc"] <= 1
    # and the features' diagnostics, in the JSON and in MLflow (issue 20)
    diag = json.loads((tmp_path / "eval" / "lambda-2.0.json").read_text())["diagnostics"]
    assert eval_run["metrics.diagnostics_token_collapse"] == pytest.approx(diag["token_collapse"])
    assert -1 <= eval_run["metrics.diagnostics_background_token_alignment"] <= 1
    experiment = mlflow.get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"])
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_unreachable_store_spools_and_sync_delivers(store, params, monkeypatch, tmp_path, caplog):
    """The spool without a server (tests/test_tracking_server.py has the real outage): nothing
    raises, one warning, every record in the file; `sync` delivers them under one parent."""
    from rap.tracking_spool import SPOOL_FILE, Spool

    monkeypatch.setenv("RAP_PIPELINE_RUN_ID", "spooled")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: refused at once
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv(tracking.RETRY_INTERVAL_ENV, "0")
    with caplog.at_level("WARNING", logger="rap.tracking"):
        with tracking.stage_run("pretrain", params, spool=tmp_path) as run:
            assert run and run.info.run_id.startswith("local-")
            for step in (1, 2, 3):
                tracking.log_metrics({"train": {"loss": 1.0 / step}}, step=step)
            tracking.log_text("note", "note.txt")
            tracking.log_dict({"a": 1}, "extra/info.json")
    assert sum("training goes on" in r.getMessage() for r in caplog.records) == 1
    ops = [r["op"] for r in Spool(tmp_path).records()]
    assert ops[0] == "start" and ops.count("metrics") == 3 and ops[-1] == "end" and "text" in ops

    (done,) = tracking.sync(tmp_path, uri=store)
    assert done["records"] == len(ops) and not (tmp_path / SPOOL_FILE).exists()
    runs = _runs(store).set_index("tags.rap.role")
    child, parent = runs.loc["stage"], runs.loc["pipeline"]
    assert child["tags.mlflow.parentRunId"] == parent["run_id"] and parent["tags.rap.pipeline_key"] == "id:spooled"
    assert child["status"] == "FINISHED" and parent["status"] == "FINISHED"
    history = mlflow.MlflowClient(store).get_metric_history(child["run_id"], "train_loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    assert child["params.scale"] == "embedded"
    client = mlflow.MlflowClient(store)
    assert {a.path for a in client.list_artifacts(child["run_id"])} == {"note.txt", "extra"}
    info = client.download_artifacts(child["run_id"], "extra/info.json", str(tmp_path))
    assert json.loads(Path(info).read_text()) == {"a": 1}


def test_multi_node_run_on_sqlite_is_warned_about(store, monkeypatch, caplog):
    with caplog.at_level("WARNING", logger="rap.tracking"):
        tracking.check_store(1)
        assert not caplog.records
        tracking.check_store(8)
    (record,) = caplog.records
    assert "8-node run logs to the SQLite file" in record.getMessage() and "mlflow server" in record.getMessage()
    monkeypatch.setenv(tracking.RETRY_INTERVAL_ENV, "soon")
    with pytest.raises(ValueError, match="RAP_TRACKING_RETRY_S='soon'"):
        tracking.check_store(1)
