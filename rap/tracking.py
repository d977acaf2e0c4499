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
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from rap.tracking_spool import ReplayStopped, Spool, local_run_id, spool_files, spool_path

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
    "sync",
    "check_store",
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


# --------------------------------------------------------------------------------------
# Outages: brief retries, then the spool (rap.tracking_spool)
# --------------------------------------------------------------------------------------

# MLflow's own HTTP retries (7, backoff factor 2: minutes per call) are cut to a few seconds,
# unless the user set them: a call that still fails is spooled and training goes on.
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
RETRY_INTERVAL_ENV = "RAP_TRACKING_RETRY_S"  # seconds between replay attempts while spooling
DEFAULT_RETRY_INTERVAL = 60.0
# Error codes of an MLflow server that answered but refused (a spooled record it refuses goes
# to the rejected file); any other failure (no answer, 5xx, lock, I/O) is an outage.
_REFUSALS = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST"}


def _is_refusal(err: Exception) -> bool:
    return getattr(err, "error_code", None) in _REFUSALS


def _outage_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the store did not take it": MLflow's, the HTTP client's, I/O, SQL."""
    from mlflow.exceptions import MlflowException

    errors: list[type[BaseException]] = [MlflowException, OSError]
    with contextlib.suppress(ImportError):
        import requests

        errors.append(requests.RequestException)
    with contextlib.suppress(ImportError):
        import sqlalchemy.exc

        errors.append(sqlalchemy.exc.SQLAlchemyError)
    return tuple(errors)


def _retry_interval() -> float:
    raw = os.environ.get(RETRY_INTERVAL_ENV, str(DEFAULT_RETRY_INTERVAL))
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"environment variable {RETRY_INTERVAL_ENV}={raw!r}: expected seconds") from None
    if value < 0:
        raise ValueError(f"environment variable {RETRY_INTERVAL_ENV}={raw!r}: expected seconds >= 0")
    return value


def _now_ms() -> int:
    return int(time.time() * 1000)


def _reachable(uri: str) -> bool:
    """A cheap probe before a replay: an HTTP server's /health, one try, 2 s; other stores: yes
    (the replay itself is the probe)."""
    if not uri.startswith(("http://", "https://")):
        return True
    import requests

    try:
        return requests.get(uri.rstrip("/") + "/health", timeout=2).ok
    except requests.RequestException:
        return False


@dataclass
class _Stage:
    """One open stage run of this process."""

    run_id: str  # the MLflow run id, or a spool-local id while the run could not be created
    parent_id: str | None
    uri: str
    spool: Spool
    spooling: bool = False
    next_try: float = 0.0

    @property
    def info(self) -> SimpleNamespace:
        return SimpleNamespace(run_id=self.run_id, status="RUNNING")

    def __bool__(self) -> bool:
        return True


_STAGES: list[_Stage] = []
_WARNED: set[str] = set()
_ALIASES: dict[str, str] = {}  # spool-local run ids -> the MLflow run ids a replay gave them


def _warn_once(key: str, message: str, *args: Any) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message, *args)


def _client(uri: str) -> Any:
    for name, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(name, value)
    from mlflow import MlflowClient

    return MlflowClient(uri)


def _start_args(record: Mapping[str, Any], ids: Mapping[str, str]) -> dict[str, Any]:
    """:func:`_create_stage_run`'s arguments from a ``start`` record."""
    nested_in = record.get("nested_in")
    return {
        "experiment": record["experiment"],
        "run_name": record["run_name"],
        "tags": record["tags"],
        "key": record.get("pipeline_key"),
        "parent_tags": record.get("parent_tags") or {},
        "nested_in": ids.get(nested_in, nested_in) if nested_in else None,
        "start_time": record["time"],
    }


def _deliver(client: Any, uri: str, record: dict[str, Any], ids: dict[str, str]) -> None:
    """Perform one spool record against ``client`` (see rap.tracking_spool for the records)."""
    from mlflow.entities import Metric, Param, RunTag

    op = record["op"]
    run_id = ids.get(record.get("run", ""), record.get("run"))
    if op == "start":
        ids[record["run"]] = _create_stage_run(client, uri, **_start_args(record, ids))[0]
    elif op == "params":
        items = [Param(k, v) for k, v in record["values"].items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            client.log_batch(run_id, params=items[i : i + PARAMS_PER_BATCH])
    elif op == "metrics":
        step = record.get("step") or 0
        client.log_batch(run_id, metrics=[Metric(k, v, record["time"], step) for k, v in record["values"].items()])
    elif op == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in record["values"].items()])
    elif op == "artifact":
        path = Path(record["path"])
        if path.is_dir():
            client.log_artifacts(run_id, str(path), record.get("artifact_path"))
        else:
            client.log_artifact(run_id, str(path), record.get("artifact_path"))
    elif op == "text":
        client.log_text(run_id, record["text"], record["file"])
    elif op == "dict":
        client.log_dict(run_id, record["data"], record["file"])
    elif op == "end":
        client.set_terminated(run_id, status=record["status"], end_time=record["time"])
        parent = record.get("parent")
        if parent == "auto":  # the parent of a run created by this replay
            parent = client.get_run(run_id).data.tags.get("mlflow.parentRunId")
        if parent:
            client.set_terminated(ids.get(parent, parent), status=record["status"])
    else:
        raise ValueError(f"unknown spool record {op!r}")


def sync(place: str | Path, uri: str | None = None) -> list[dict[str, Any]]:
    """Replay the spool files of a run directory, or one spool file (``rap tracking sync``),
    into ``uri`` (default: the store the records were meant for, else :func:`tracking_uri`).
    One summary per file: ``{"spool", "records", "runs", "uri"}``; raises
    :class:`rap.tracking_spool.ReplayStopped` when the store is still unreachable."""
    done = []
    for path in spool_files(place):
        spool = Spool(path)
        records = spool.records()
        target = uri or next((r["uri"] for r in records if r.get("uri")), None) or tracking_uri()
        client = _client(target)
        ids = spool.replay(lambda record, ids, c=client, t=target: _deliver(c, t, record, ids), _is_refusal)
        done.append({"spool": str(path), "records": len(records), "runs": ids, "uri": target})
    return done


def _spool(stage: _Stage, record: dict[str, Any]) -> None:
    record = {"uri": stage.uri, **record}
    for field_name in ("run", "nested_in"):  # built before a replay renamed the run
        if record.get(field_name) in _ALIASES:
            record[field_name] = _ALIASES[record[field_name]]
    stage.spool.append(record)


def _flush(stage: _Stage) -> bool:
    """Replay ``stage``'s spool if the store answers again (at most every RAP_TRACKING_RETRY_S);
    True when the stage logs live again."""
    if not stage.spooling:
        return True
    if time.monotonic() < stage.next_try:
        return False
    stage.next_try = time.monotonic() + _retry_interval()
    if not _reachable(stage.uri):
        return False
    try:
        ids = Spool(stage.spool.path).replay(
            lambda record, ids: _deliver(_client(stage.uri), stage.uri, record, ids), _is_refusal
        )
    except ReplayStopped as err:
        log.info("MLflow still unreachable: %s", err)
        return False
    _ALIASES.update(ids)
    stage.run_id = ids.get(stage.run_id, stage.run_id)
    for other in _STAGES:  # an enclosing stage created by the same replay
        other.run_id = ids.get(other.run_id, other.run_id)
        if other.parent_id:
            other.parent_id = ids.get(other.parent_id, other.parent_id)
    stage.spooling = False
    log.warning("MLflow at %s answers again: the spooled records of %s are logged", stage.uri, stage.spool.path)
    return True


def _call(stage: _Stage, record: dict[str, Any] | Callable[[], dict[str, Any]], live: Callable[[Any], None]) -> None:
    """Log live (one retry after a second, on top of MLflow's own HTTP retries); on failure warn
    once, spool ``record`` (or what the callable makes, only then) and every later one until the
    store answers again."""
    if _flush(stage):
        for attempt in (1, 2):
            try:
                live(_client(stage.uri))
                return
            except _outage_errors() as err:
                if _is_refusal(err):
                    raise
                if attempt == 2:
                    _warn_once(
                        stage.uri,
                        "MLflow at %s failed (%s): training goes on; tracking records go to %s and are "
                        "replayed when the server answers again (or run `rap tracking sync %s`)",
                        stage.uri,
                        str(err).splitlines()[0][:300],
                        stage.spool.path,
                        stage.spool.path.parent,
                    )
                    stage.spooling = True
                    stage.next_try = time.monotonic() + _retry_interval()
                else:
                    time.sleep(1.0)
    _spool(stage, record() if callable(record) else record)


# --------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------


def _experiment_id(client: Any, uri: str, name: str | None = None) -> str:
    """The experiment's id, created on first use as a model-training experiment (MLflow 3's UI
    opens an experiment without a kind in its GenAI view; ours opens on the runs table)."""
    from mlflow.exceptions import MlflowException

    name = name or experiment_name()
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


def _parent_tags(params: Params | None, key: str) -> dict[str, str]:
    tags = {PIPELINE_KEY_TAG: key, ROLE_TAG: "pipeline", **_context_tags(params)}
    tags.pop("rap.dvc_stage", None)  # a stage tag belongs to the children
    return tags


def _parent_run_id(client: Any, experiment_id: str, key: str, tags: Mapping[str, str]) -> str:
    found = _find_parents(client, experiment_id, key)
    if found:
        return found[0].info.run_id
    name = os.environ.get("DVC_EXP_NAME") or f"pipeline {_dt.datetime.now():%Y-%m-%d %H:%M}"
    created = client.create_run(experiment_id, tags=dict(tags), run_name=name)
    # Converge when another process created one at the same moment: the oldest wins.
    found = _find_parents(client, experiment_id, key)
    winner = found[0].info.run_id if found else created.info.run_id
    if winner != created.info.run_id:
        client.delete_run(created.info.run_id)
    return winner


def _create_stage_run(
    client: Any,
    uri: str,
    *,
    experiment: str,
    run_name: str,
    tags: Mapping[str, str],
    key: str | None,
    parent_tags: Mapping[str, str],
    nested_in: str | None,
    start_time: int | None = None,
) -> tuple[str, str | None]:
    """Create a stage's run (under ``nested_in``, else under the pipeline's parent of ``key``);
    returns ``(run id, parent id)``. The one place runs are made, live or from the spool."""
    experiment_id = _experiment_id(client, uri, experiment)
    parent_id = nested_in or _parent_run_id(client, experiment_id, key, parent_tags)
    run_tags = {**tags, "mlflow.parentRunId": parent_id}
    run = client.create_run(experiment_id, start_time=start_time, tags=run_tags, run_name=run_name)
    if nested_in is None:
        client.update_run(parent_id, status="RUNNING")
    return run.info.run_id, (None if nested_in else parent_id)


def log_params(values: Mapping[str, Any]) -> None:
    """Log params to the active stage run (values stringified and truncated to MLflow's limit)."""
    stage = _current()
    if stage is None:
        return
    items = {metric_name(k): _param_value(v) for k, v in values.items()}

    def live(client: Any) -> None:
        from mlflow.entities import Param

        batch = [Param(k, v) for k, v in items.items()]
        for i in range(0, len(batch), PARAMS_PER_BATCH):
            client.log_batch(stage.run_id, params=batch[i : i + PARAMS_PER_BATCH])

    _call(stage, {"op": "params", "run": stage.run_id, "values": items}, live)


def set_tags(tags: Mapping[str, Any]) -> None:
    """Tag the active stage run (values stringified and truncated)."""
    stage = _current()
    if stage is None:
        return
    values = {k: str(v)[:MAX_TAG_VALUE] for k, v in tags.items()}

    def live(client: Any) -> None:
        from mlflow.entities import RunTag

        client.log_batch(stage.run_id, tags=[RunTag(k, v) for k, v in values.items()])

    _call(stage, {"op": "tags", "run": stage.run_id, "values": values}, live)


def find_run_by_tag(tag: str, value: str) -> str | None:
    """The newest run of the experiment carrying ``tag = value`` (None when tracking is off,
    there is none, or the store does not answer: a link is not worth stopping for)."""
    if not tracking_enabled():
        return None
    uri = tracking_uri()
    try:
        client = _client(uri)
        exp = client.get_experiment_by_name(experiment_name())
        if exp is None:
            return None
        found = client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`{tag}` = {_quoted(value)}",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    except _outage_errors() as err:
        _warn_once(f"find:{uri}", "MLflow at %s did not answer a search (%s)", uri, str(err).splitlines()[0][:300])
        return None
    return found[0].info.run_id if found else None


def check_store(nodes: int = 1) -> None:
    """Before any work: say when the tracking server does not answer (the run then spools its
    records, see rap.tracking_spool) and warn when a run of several nodes would log to a SQLite
    file (README, "Tracking on a cluster": SQLite on a shared filesystem is written by every job
    of the pipeline at once, and its locks do not hold over NFS)."""
    if not tracking_enabled():
        return
    _retry_interval()  # a bad RAP_TRACKING_RETRY_S fails here, not in the middle of training
    uri = tracking_uri()
    if nodes > 1 and uri.startswith("sqlite:"):
        log.warning(
            "a %d-node run logs to the SQLite file %s: on a cluster start an `mlflow server` once and "
            'set MLFLOW_TRACKING_URI to it (README, "Tracking on a cluster")',
            nodes,
            uri,
        )
    if not _reachable(uri):
        log.warning(
            "MLflow at %s does not answer: training goes on and its tracking records are spooled in the "
            "run's directory (mlflow-spool.jsonl), replayed when the server answers (or `rap tracking sync DIR`)",
            uri,
        )


@contextlib.contextmanager
def stage_run(
    stage: str,
    params: Params | None = None,
    *,
    tags: dict | None = None,
    param_values: Mapping[str, Any] | None = None,
    spool: str | Path | None = None,
) -> Iterator[Any]:
    """Open the nested MLflow run of one pipeline stage and make it the active run.

    ``stage``: the stage's name (the run is named after ``DVC_STAGE`` when DVC runs it, e.g.
    ``finetune@msrvtt-7k``); ``params``: the resolved config, logged as params unless
    ``param_values`` gives the params to log instead (an evaluation logs the knobs of the
    checkpoint it scores, not the command's); ``tags``: extra tags; ``spool``: the run's
    directory (or a spool file) where records MLflow does not take are kept (default: the
    working directory).
    Yields the stage (``info.run_id``), or a falsy no-op object when tracking is disabled
    (``RAP_TRACKING=0``) or this is not rank 0. The run ends FINISHED, or FAILED when the block
    raises; the parent's status follows. MLflow failing never stops the block: see the module
    docstring of rap.tracking_spool.
    """
    if not tracking_enabled():
        yield _NoRun()
        return
    uri = tracking_uri()
    outer = _STAGES[-1] if _STAGES else None
    key = None if outer is not None else pipeline_key()
    run_tags = {ROLE_TAG: "stage", "rap.stage": stage, **_context_tags(params)}
    if key is not None:
        run_tags[PIPELINE_KEY_TAG] = key
    run_tags.update({k: str(v)[:MAX_TAG_VALUE] for k, v in (tags or {}).items()})
    start = {
        "experiment": experiment_name(),
        "run_name": os.environ.get("DVC_STAGE") or stage,
        "tags": run_tags,
        "pipeline_key": key,
        "parent_tags": _parent_tags(params, key) if key is not None else {},
        "nested_in": outer.run_id if outer is not None else None,
    }
    current = _Stage(run_id=local_run_id(), parent_id=None, uri=uri, spool=Spool(spool_path(spool or Path.cwd())))
    current.spooling = bool(outer and outer.spooling)
    record = {"op": "start", "run": current.run_id, "time": _now_ms(), **start}

    def create(client: Any) -> None:
        current.run_id, current.parent_id = _create_stage_run(client, uri, **_start_args(record, {}))

    _call(current, record, create)
    if current.spooling and key is not None and current.run_id.startswith("local-"):
        current.parent_id = "auto"  # the pipeline's parent, found when the run is created
    _STAGES.append(current)
    status = "FAILED"
    try:
        if param_values is not None:
            log_params(param_values)
        elif params is not None:
            log_params(params.to_flat_dict())
        yield current
        status = "FINISHED"
    finally:
        _STAGES.pop()
        end = {"op": "end", "run": current.run_id, "status": status, "time": _now_ms(), "parent": current.parent_id}

        def finish(client: Any) -> None:
            client.set_terminated(current.run_id, status=status, end_time=end["time"])
            parent = current.parent_id
            if parent == "auto":  # created by a replay of this stage's spool
                parent = client.get_run(current.run_id).data.tags.get("mlflow.parentRunId")
            if parent is not None:
                client.set_terminated(parent, status=status)

        current.next_try = 0.0  # one last replay attempt before the stage ends
        _call(current, end, finish)
        if current.spooling:
            log.warning(
                "%d MLflow record(s) of stage %s are in %s: run `rap tracking sync %s` once the server answers",
                len(current.spool),
                stage,
                current.spool.path,
                current.spool.path.parent,
            )


def _current() -> _Stage | None:
    """The innermost open stage of this process when it logs (never auto-creates a run)."""
    if os.environ.get("RAP_TRACKING", "1").strip().lower() in ("0", "false", "no", "off") or _rank() != 0:
        return None
    return _STAGES[-1] if _STAGES else None


def _active() -> bool:
    return _current() is not None


def log_metrics(metrics: Mapping[str, Any], step: int | None = None) -> None:
    """Log (nested) metrics to the active stage run; ``{"t2v": {"R@1": x}}`` -> ``t2v_R1``.

    A no-op outside :func:`stage_run`, with tracking off, and on ranks other than 0. The time
    of the call is the metric's timestamp, also when it is spooled and replayed later.
    """
    flat = flatten_metrics(metrics)  # validate even when not logging: bad values fail early
    stage = _current()
    if stage is None:
        return
    now = _now_ms()

    def live(client: Any) -> None:
        from mlflow.entities import Metric

        client.log_batch(stage.run_id, metrics=[Metric(k, v, now, step or 0) for k, v in flat.items()])

    _call(stage, {"op": "metrics", "run": stage.run_id, "values": flat, "step": step, "time": now}, live)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """Copy a file (or directory) into the active stage run's artifacts."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"artifact {path} does not exist")
    stage = _current()
    if stage is None:
        return

    def live(client: Any) -> None:
        if path.is_dir():
            client.log_artifacts(stage.run_id, str(path), artifact_path)
        else:
            client.log_artifact(stage.run_id, str(path), artifact_path)

    record = {"op": "artifact", "run": stage.run_id, "path": str(path.resolve()), "artifact_path": artifact_path}
    _call(stage, record, live)


def log_figure(figure: Any, artifact_file: str) -> None:
    """Save a matplotlib figure as an artifact of the active stage run (spooled as a PNG beside
    the spool while MLflow is away)."""
    stage = _current()
    if stage is None:
        return

    def record() -> dict[str, Any]:
        saved = stage.spool.path.parent / "mlflow-spool-artifacts" / artifact_file
        saved.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(saved)
        parent = str(Path(artifact_file).parent)
        return {
            "op": "artifact",
            "run": stage.run_id,
            "path": str(saved),
            "artifact_path": None if parent == "." else parent,
        }

    _call(stage, record, lambda client: client.log_figure(stage.run_id, figure, artifact_file))


def log_text(text: str, artifact_file: str) -> None:
    stage = _current()
    if stage is not None:
        record = {"op": "text", "run": stage.run_id, "text": text, "file": artifact_file}
        _call(stage, record, lambda client: client.log_text(stage.run_id, text, artifact_file))


def log_dict(data: Mapping[str, Any], artifact_file: str) -> None:
    """A JSON/YAML artifact (by the file's extension) of the active stage run."""
    stage = _current()
    if stage is not None:
        record = {"op": "dict", "run": stage.run_id, "data": dict(data), "file": artifact_file}
        _call(stage, record, lambda client: client.log_dict(stage.run_id, dict(data), artifact_file))
