"""MLflow tracking: one parent run per pipeline execution, one nested run per stage.

Store. By default an embedded SQLite database, ``sqlite:///<repo root>/mlflow.db``, with
artifacts under ``<repo root>/mlartifacts`` (the artifact location is fixed when the
experiment is created, as MLflow 3 requires: ``mlartifacts/<experiment>/<run id>/artifacts``).
``<repo root>`` is the repository the pipeline runs in (:func:`repo_root`; a temporary
``dvc exp run --temp``/``--queue`` workspace logs into its parent repository). ``MLFLOW_TRACKING_URI``
points everything at a team server instead; ``MLFLOW_EXPERIMENT_NAME`` overrides the
experiment name ``rap``. ``RAP_TRACKING=0`` switches tracking off (every call is a no-op
and MLflow is never imported). View with
``mlflow ui --backend-store-uri sqlite:///mlflow.db`` (stop its huey workers afterwards).

Parent run. Every DVC stage is a separate process, so the stages of one pipeline execution
meet through a *pipeline key*, stored as the tag ``rap.pipeline_key`` on the parent; each
stage searches for it and creates the parent when absent. The key is the first of:

1. ``RAP_PIPELINE_RUN_ID`` - explicit, for schedulers whose jobs do not share an ancestor
   process (Snakemake on SLURM: export one id to every job);
2. ``DVC_EXP_NAME`` + ``DVC_EXP_BASELINE_REV`` - one ``dvc exp run`` (names are unique per
   baseline; a ``--force`` re-run of the same name joins the earlier parent);
3. the nearest ancestor process that is a pipeline runner (``dvc`` or ``snakemake``),
   identified by pid and start time - one ``dvc repro`` / ``snakemake`` invocation;
4. otherwise (a stage run by hand) the git revision, dirty flag and date: manual runs of one
   day on one code state share a parent.

Two processes creating the same parent at once (rare: stages of one execution run one after
the other) both converge on the oldest parent with the key. The parent's status follows its
last stage (RUNNING while a stage runs, then FINISHED or FAILED), since no process knows when
the whole pipeline ends.

Nested run. :func:`stage_run` opens a child of the parent (or of the run already active in
this process, e.g. an evaluation inside a fine-tuning stage), tagged with the git revision
and dirty flag, ``DVC_STAGE``, ``DVC_EXP_NAME``, ``DVC_EXP_BASELINE_REV`` and the scale, and
logs the resolved config (:meth:`rap.config.Params.to_flat_dict`) as params. Only rank 0
logs under DDP: every other rank gets the no-op run.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Iterator, Mapping

if TYPE_CHECKING:
    from rap.config import Params

__all__ = [
    "tracking_enabled",
    "tracking_uri",
    "experiment_name",
    "pipeline_key",
    "metric_name",
    "flatten_metrics",
    "stage_run",
    "log_metrics",
    "log_params",
    "set_tags",
    "find_run_by_tag",
    "log_artifact",
    "log_figure",
    "log_text",
    "log_dict",
]

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "rap"
PIPELINE_KEY_TAG = "rap.pipeline_key"
ROLE_TAG = "rap.role"  # "pipeline" on parents, "stage" on children
RUNNER_NAMES = ("dvc", "snakemake")
# MLflow 3's experiment kinds (its UI's "Model training" vs "GenAI apps & agents" switch)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# A training run tags itself with the sha256 of the checkpoint it wrote; an evaluation of that
# file finds its training run by it (the checkpoint itself holds no run id: it must reproduce).
CHECKPOINT_DIGEST_TAG = "rap.checkpoint_sha256"
TRAINED_BY_TAG = "rap.trained_by"
# MLflow limits (mlflow.utils.validation): param values are truncated, tag values too.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY_LENGTH = 250
PARAMS_PER_BATCH = 100


# --------------------------------------------------------------------------------------
# Configuration from the environment
# --------------------------------------------------------------------------------------


def tracking_enabled() -> bool:
    """False when ``RAP_TRACKING`` is 0/false/no/off, or on a DDP rank other than 0."""
    flag = os.environ.get("RAP_TRACKING", "1").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return False
    if flag not in ("1", "true", "yes", "on", ""):
        raise ValueError(f"environment variable RAP_TRACKING={flag!r}: expected 0 or 1")
    return _rank() == 0


def _rank() -> int:
    """Process rank: the process group's when one exists, else torchrun's ``RANK``."""
    # A process group can only exist once torch.distributed is imported: checking first keeps
    # torch out of processes that never load it (tables, figures).
    if "torch.distributed" in sys.modules:
        from rap import distributed

        if distributed.is_distributed():
            return distributed.get_rank()
    raw = os.environ.get("RANK", "0") or "0"
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable RANK={raw!r} must be an integer") from None


def repo_root() -> Path:
    """Where ``mlflow.db`` lives: the pipeline's repository.

    ``DVC_ROOT`` (set for every DVC stage) or else the nearest ancestor of the working
    directory holding ``dvc.yaml`` or ``.git`` (else the working directory itself). A
    ``dvc exp run --temp``/``--queue`` workspace, ``<repo>/.dvc/tmp/exps/<tmp>``, is thrown
    away after the run, so its runs go to ``<repo>`` instead.
    """
    start = Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()
    root = next((d for d in (start, *start.parents) if (d / "dvc.yaml").is_file() or (d / ".git").exists()), start)
    parts = root.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def _artifact_location(uri: str, name: str) -> str | None:
    """``mlartifacts/<experiment>/`` next to a SQLite database (runs then store theirs in
    ``<run id>/artifacts/``); a tracking server chooses its own location."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        folder = re.sub(r"[^\w.\-]", "_", name).lstrip(".") or "experiment"
        return (db.parent / "mlartifacts" / folder).resolve().as_uri()
    return None


# --------------------------------------------------------------------------------------
# Tags: git, DVC, pipeline key
# --------------------------------------------------------------------------------------


def _git(*args: str) -> str | None:
    cwd = os.environ.get("DVC_ROOT") or os.getcwd()
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> tuple[str, bool | None]:
    """``(revision, dirty)`` of the workspace the stage runs in (``unknown``/None outside git)."""
    rev = _git("rev-parse", "HEAD")
    if rev is None:
        return "unknown", None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return rev, (bool(status) if status is not None else None)


def _runner_ancestor() -> str | None:
    """``name:pid:start`` of the nearest ``dvc``/``snakemake`` ancestor process, if visible."""
    try:
        import psutil

        for proc in psutil.Process().parents():
            with contextlib.suppress(psutil.Error):
                argv = proc.cmdline()[:3] or [proc.name()]
                # "dvc repro" or "python .../bin/dvc repro": look at the program and its script.
                names = [Path(a).name for a in argv]
                for runner in RUNNER_NAMES:
                    if runner in names:
                        return f"{runner}:{proc.pid}:{int(proc.create_time())}"
    except (ImportError, OSError):
        return None
    return None


def pipeline_key() -> str:
    """The key shared by the stages of one pipeline execution (see the module docstring)."""
    explicit = os.environ.get("RAP_PIPELINE_RUN_ID")
    if explicit:
        return f"id:{explicit}"
    exp = os.environ.get("DVC_EXP_NAME")
    if exp:
        return f"dvc-exp:{exp}@{os.environ.get('DVC_EXP_BASELINE_REV', '')}"
    runner = _runner_ancestor()
    if runner:
        return runner
    rev, dirty = git_state()
    return f"manual:{rev[:12]}{'-dirty' if dirty else ''}:{_dt.date.today().isoformat()}"


def _context_tags(params: Params | None) -> dict[str, str]:
    rev, dirty = git_state()
    tags = {"rap.git_rev": rev, "rap.git_dirty": "unknown" if dirty is None else str(dirty).lower()}
    if rev != "unknown":
        tags["mlflow.source.git.commit"] = rev  # shown by the MLflow UI
    for env, tag in (
        ("DVC_STAGE", "rap.dvc_stage"),
        ("DVC_EXP_NAME", "rap.dvc_exp_name"),
        ("DVC_EXP_BASELINE_REV", "rap.dvc_exp_baseline_rev"),
    ):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    if params is not None:
        tags["rap.scale"] = params.scale
    return tags


# --------------------------------------------------------------------------------------
# Names and values within MLflow's limits
# --------------------------------------------------------------------------------------

_BAD_NAME_CHARS = re.compile(r"[^\w./\- ]")


def metric_name(name: str) -> str:
    """A valid MLflow metric/param key: ``@`` dropped (``R@1`` -> ``R1``, the paper's
    notation), other characters outside ``[A-Za-z0-9_./ -]`` (``:`` too, invalid on
    Windows) replaced by ``_``, slashes that MLflow would read as a path collapsed."""
    clean = _BAD_NAME_CHARS.sub("_", name.replace("@", ""))
    clean = re.sub(r"/+", "/", clean).strip("/")
    clean = "/".join("_" if part in (".", "..") else part for part in clean.split("/"))
    if not clean:
        raise ValueError(f"metric name {name!r} has no valid character left")
    return clean[:MAX_KEY_LENGTH]


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"t2v": {"R@1": 40.0}}`` -> ``{"t2v_R1": 40.0}``; values must be real numbers."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}_{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, name))
            continue
        try:
            if isinstance(value, (bool, str, bytes)):
                raise TypeError
            number = float(value)  # Python, numpy and 0-d torch numbers
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"metric {name!r} = {value!r} is not a number") from None
        if math.isnan(number):
            log.warning("metric %s is NaN", name)
        flat[metric_name(name)] = number
    return flat


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_PARAM_VALUE else text[: MAX_PARAM_VALUE - 3] + "..."


# --------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------


class _NoRun:
    """What :func:`stage_run` yields when tracking is off: ``info.run_id`` is None."""

    info = SimpleNamespace(run_id=None, experiment_id=None, status="DISABLED")
    data = SimpleNamespace(params={}, metrics={}, tags={})

    def __bool__(self) -> bool:
        return False


def _experiment_id(client: Any, uri: str) -> str:
    """The experiment's id, created on first use as a model-training experiment (MLflow 3's UI
    opens an experiment without a kind in its GenAI view; ours opens on the runs table)."""
    from mlflow.exceptions import MlflowException

    name = experiment_name()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(
                name, artifact_location=_artifact_location(uri, name), tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        except MlflowException:  # another process created it in between
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise RuntimeError(
            f"MLflow experiment {name!r} is deleted in {uri}: restore it "
            "(mlflow experiments restore) or set MLFLOW_EXPERIMENT_NAME"
        )
    if exp.tags.get(EXPERIMENT_KIND_TAG) is None:  # made by an older rap, or by hand
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def _quoted(value: str) -> str:
    """A string literal of MLflow's search syntax."""
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def _find_parents(client: Any, experiment_id: str, key: str) -> list:
    return list(
        client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{PIPELINE_KEY_TAG}` = {_quoted(key)} and tags.`{ROLE_TAG}` = 'pipeline'",
            order_by=["attributes.start_time ASC"],
            max_results=10,
        )
    )


def _parent_run_id(client: Any, experiment_id: str, params: Params | None) -> str:
    key = pipeline_key()
    found = _find_parents(client, experiment_id, key)
    if found:
        return found[0].info.run_id
    tags = {PIPELINE_KEY_TAG: key, ROLE_TAG: "pipeline", **_context_tags(params)}
    tags.pop("rap.dvc_stage", None)  # a stage tag belongs to the children
    name = os.environ.get("DVC_EXP_NAME") or f"pipeline {_dt.datetime.now():%Y-%m-%d %H:%M}"
    created = client.create_run(experiment_id, tags=tags, run_name=name)
    # Converge when another process created one at the same moment: the oldest wins.
    found = _find_parents(client, experiment_id, key)
    winner = found[0].info.run_id if found else created.info.run_id
    if winner != created.info.run_id:
        client.delete_run(created.info.run_id)
    return winner


def log_params(values: Mapping[str, Any]) -> None:
    """Log params to the active stage run (values stringified and truncated to MLflow's limit)."""
    if not _active():
        return
    import mlflow

    items = [(metric_name(k), _param_value(v)) for k, v in values.items()]
    for i in range(0, len(items), PARAMS_PER_BATCH):
        mlflow.log_params(dict(items[i : i + PARAMS_PER_BATCH]))


def set_tags(tags: Mapping[str, Any]) -> None:
    """Tag the active stage run (values stringified and truncated)."""
    if not _active():
        return
    import mlflow

    mlflow.set_tags({k: str(v)[:MAX_TAG_VALUE] for k, v in tags.items()})


def find_run_by_tag(tag: str, value: str) -> str | None:
    """The newest run of the experiment carrying ``tag = value`` (None when tracking is off
    or there is none)."""
    if not tracking_enabled():
        return None
    from mlflow import MlflowClient

    uri = tracking_uri()
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment_name())
    if exp is None:
        return None
    found = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{tag}` = {_quoted(value)}",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0].info.run_id if found else None


@contextlib.contextmanager
def stage_run(
    stage: str, params: Params | None = None, *, tags: dict | None = None, param_values: Mapping[str, Any] | None = None
) -> Iterator[Any]:
    """Open the nested MLflow run of one pipeline stage and make it the active run.

    ``stage``: the stage's name (the run is named after ``DVC_STAGE`` when DVC runs it, e.g.
    ``finetune@msrvtt-7k``); ``params``: the resolved config, logged as params unless
    ``param_values`` gives the params to log instead (an evaluation logs the knobs of the
    checkpoint it scores, not the command's); ``tags``: extra tags. Yields the active
    :class:`mlflow.ActiveRun`, or a falsy no-op object when tracking is disabled
    (``RAP_TRACKING=0``) or this is not rank 0. The run ends FINISHED, or FAILED when the block
    raises; the parent's status follows.
    """
    if not tracking_enabled():
        yield _NoRun()
        return
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment_id = _experiment_id(client, uri)
    outer = mlflow.active_run()
    # Nest under the run this process already has open, else under the pipeline's parent.
    parent_id = None if outer is not None else _parent_run_id(client, experiment_id, params)
    run_tags = {ROLE_TAG: "stage", "rap.stage": stage, **_context_tags(params)}
    if parent_id is not None:
        run_tags[PIPELINE_KEY_TAG] = pipeline_key()
    run_tags.update({k: str(v)[:MAX_TAG_VALUE] for k, v in (tags or {}).items()})
    run = mlflow.start_run(
        experiment_id=experiment_id,
        run_name=os.environ.get("DVC_STAGE") or stage,
        nested=outer is not None,
        parent_run_id=parent_id,
        tags=run_tags,
    )
    status = "FAILED"
    try:
        if parent_id is not None:
            client.update_run(parent_id, status="RUNNING")
        if param_values is not None:
            log_params(param_values)
        elif params is not None:
            log_params(params.to_flat_dict())
        yield run
        status = "FINISHED"
    finally:
        mlflow.end_run(status=status)
        if parent_id is not None:
            client.set_terminated(parent_id, status=status)


def _active() -> bool:
    """True inside a :func:`stage_run` that logs (never auto-creates a run)."""
    if os.environ.get("RAP_TRACKING", "1").strip().lower() in ("0", "false", "no", "off") or _rank() != 0:
        return False
    if "mlflow" not in sys.modules:  # no stage_run opened in this process
        return False
    import mlflow

    return mlflow.active_run() is not None


def log_metrics(metrics: Mapping[str, Any], step: int | None = None) -> None:
    """Log (nested) metrics to the active stage run; ``{"t2v": {"R@1": x}}`` -> ``t2v_R1``.

    A no-op outside :func:`stage_run`, with tracking off, and on ranks other than 0.
    """
    flat = flatten_metrics(metrics)  # validate even when not logging: bad values fail early
    if not _active():
        return
    import mlflow

    mlflow.log_metrics(flat, step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """Copy a file (or directory) into the active stage run's artifacts."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"artifact {path} does not exist")
    if not _active():
        return
    import mlflow

    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path)
    else:
        mlflow.log_artifact(str(path), artifact_path)


def log_figure(figure: Any, artifact_file: str) -> None:
    """Save a matplotlib figure as an artifact of the active stage run."""
    if _active():
        import mlflow

        mlflow.log_figure(figure, artifact_file)


def log_text(text: str, artifact_file: str) -> None:
    if _active():
        import mlflow

        mlflow.log_text(text, artifact_file)


def log_dict(data: Mapping[str, Any], artifact_file: str) -> None:
    """A JSON/YAML artifact (by the file's extension) of the active stage run."""
    if _active():
        import mlflow

        mlflow.log_dict(dict(data), artifact_file)
