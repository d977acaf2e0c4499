"""``rap compare``: one row per DVC experiment, in the few columns an ablation is judged by.

``dvc exp show`` prints every param and every metric of every file (over 1,600 columns here).
This reads the same data (``dvc exp show --json``: the workspace, each baseline commit and its
experiments) and keeps, per row:

- the params that differ between the rows (top-level knobs such as ``lambda``, or any dotted
  key a ``-S`` changed, e.g. ``embedded.pretrain.optim.lr``);
- text-to-video R@1 with its 95 % bootstrap interval, per zero-shot dataset and per
  fine-tuning task (the metrics files of :mod:`rap.reports.layout`);
- patch and token AUC of the redundancy weights (the paper's measure) on zero-shot MSRVTT,
  the localisation scores of Table 9.

A cell is empty where the row's commit has no such metrics file and ``!`` where DVC could not
read the file there. It says ``not run`` where the file is stale in that row's commit: its stage
did not run on that row's params and upstream outputs (a ``dvc exp run TARGET`` runs TARGET and
what it needs; every other metrics file in the experiment's commit is still its baseline's).
Stale means, read from the row's dvc.lock: a param the stage records differs from the row's
params.yaml, a dependency's recorded hash differs from the hash its producing stage records, or
a stage upstream is stale. Rows are labelled as ``dvc exp show`` labels them: the baseline by
branch (or short commit), each experiment by name; queued, running and failed experiments say
so in the ``state`` column.

``--mlflow-ui URL`` adds the address of the MLflow runs table of the experiment the pipeline
logs to (``<URL>/#/experiments/<id>/runs``; MLflow 3's UI otherwise opens on an overview page).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from rap.errors import RapError
from rap.registry import DOWNSTREAM_DATASETS, FINETUNE_TASKS
from rap.reports import layout

PARAMS_FILE = "params.yaml"
# Lists that name runs rather than set a value: a change to them is not a knob of the main run.
IGNORED_PARAMS = ("ablations", "seed_runs")
# (column suffix, localisation block, weighting, statistic) of the AUC columns (Table 9's first)
AUC_COLUMNS = (("patch AUC", "patch", "paper", "auc"), ("token AUC", "token", "paper", "auc"))


class CompareError(RapError):
    """``dvc exp show`` failed or printed something that is not its JSON."""


@dataclass
class ExpRow:
    """One row: the workspace, a baseline commit or an experiment."""

    label: str
    rev: str
    state: str  # workspace | baseline | success | queued | running | failed
    params: dict[str, Any] = field(default_factory=dict)  # flattened params.yaml
    metrics: dict[str, Any] = field(default_factory=dict)  # path -> parsed file (None: unreadable)
    tree: dict[str, Any] = field(default_factory=dict)  # params.yaml as read
    stale: set[str] = field(default_factory=set)  # outputs whose stage did not run on this row's inputs


def exp_show_json(repo: Path, dvc_args: Sequence[str] = ()) -> list[dict[str, Any]]:
    """``dvc exp show --json`` in ``repo`` (``dvc_args`` are passed on: ``-A``, ``-n 3``, ``--rev``)."""
    cmd = ["dvc", "exp", "show", "--json", *dvc_args]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CompareError(f"{' '.join(cmd)} failed in {repo} ({proc.returncode}):\n{proc.stderr.strip()}")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise CompareError(f"{' '.join(cmd)} did not print JSON ({exc}):\n{proc.stdout[:2000]}") from None


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _files(data: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    """``{path: parsed content, or None where DVC could not read it}`` of the params or metrics
    files of one revision; files the revision does not have are left out."""
    out = {}
    for path, result in ((data or {}).get(kind) or {}).items():
        error = result.get("error")
        if error and error.get("type") == "FileNotFoundError":
            continue
        out[path] = None if error else result.get("data")
    return out


def _row(entry: dict[str, Any], label: str, state: str) -> ExpRow:
    data = entry.get("data") or {}
    tree = _files(data, "params").get(PARAMS_FILE) or {}
    params = {k: v for k, v in flatten(tree).items() if k.split(".")[0] not in IGNORED_PARAMS}
    return ExpRow(
        label=label, rev=entry.get("rev", ""), state=state, params=params, metrics=_files(data, "metrics"), tree=tree
    )


def experiment_rows(show: list[dict[str, Any]]) -> Iterator[ExpRow]:
    """The rows of ``dvc exp show --json``'s output in its order: workspace, then each baseline
    followed by its experiments (a named range's newest revision stands for it)."""
    for baseline in show:
        rev = baseline.get("rev", "")
        if rev == "workspace":
            yield _row(baseline, "workspace", "workspace")
            continue
        yield _row(baseline, baseline.get("name") or rev[:7], "baseline")
        for exp_range in baseline.get("experiments") or []:
            revs = exp_range.get("revs") or []
            if not revs:
                continue
            state = (exp_range.get("executor") or {}).get("state") or "success"
            name = exp_range.get("name") or revs[0].get("name") or revs[0].get("rev", "")[:7]
            yield _row(revs[0], name, state)


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    """``tree["embedded"]["model"]`` for ``"embedded.model"`` (a missing key: a unique marker)."""
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return _MISSING
        tree = tree[key]
    return tree


_MISSING = object()


def stale_outputs(lock: dict[str, Any], params: dict[str, Any]) -> set[str]:
    """The outputs in ``lock`` (a parsed dvc.lock) whose stage did not run on the inputs that
    ``params`` (the revision's params.yaml) and the lock's other stages now give it."""
    stages: dict[str, Any] = lock.get("stages") or {}
    producer = {o["path"]: (name, o.get("md5")) for name, s in stages.items() for o in s.get("outs") or []}
    verdict: dict[str, bool] = {}

    def upstream(stage: dict[str, Any]) -> Iterator[tuple[str, bool]]:
        """(producing stage, whether the recorded hash still matches) of each produced dependency."""
        for dep in stage.get("deps") or []:
            if dep["path"] in producer:
                name, md5 = producer[dep["path"]]
                yield name, md5 == dep.get("md5")

    def is_stale(name: str) -> bool:
        if name not in verdict:
            verdict[name] = False  # a cycle cannot occur in a DVC pipeline; this only ends recursion
            stage = stages[name]
            recorded = (stage.get("params") or {}).get(PARAMS_FILE) or {}
            verdict[name] = any(_lookup(params, key) != value for key, value in recorded.items()) or any(
                not same or is_stale(up) for up, same in upstream(stage)
            )
        return verdict[name]

    return {o["path"] for name, s in stages.items() if is_stale(name) for o in s.get("outs") or []}


def load_yaml(text: str) -> Any:
    """YAML as DVC reads it (YAML 1.2: ``1e-05`` is a float, which PyYAML reads as a string)."""
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load(text)


def read_lock(repo: Path, rev: str) -> dict[str, Any]:
    """dvc.lock of the workspace (``rev == "workspace"``) or of a commit (empty when it has none)."""
    if rev == "workspace":
        path = repo / "dvc.lock"
        return (load_yaml(path.read_text()) or {}) if path.is_file() else {}
    proc = subprocess.run(["git", "show", f"{rev}:dvc.lock"], cwd=repo, capture_output=True, text=True)
    return (load_yaml(proc.stdout) or {}) if proc.returncode == 0 else {}


def mark_stale(rows: Sequence[ExpRow], repo: Path) -> None:
    """Fill each row's ``stale`` from its own dvc.lock (queued rows, without params, are left)."""
    for r in rows:
        if r.tree and r.rev:
            r.stale = stale_outputs(read_lock(repo, r.rev), r.tree)


def differing_params(rows: Sequence[ExpRow]) -> list[str]:
    """The params whose value is not the same in every row that has params (queued rows have
    none yet), in params.yaml's order."""
    with_params = [r for r in rows if r.params]
    keys: dict[str, None] = {}
    for r in with_params:
        keys.update(dict.fromkeys(r.params))
    return [k for k in keys if len({json.dumps(r.params.get(k), sort_keys=True) for r in with_params}) > 1]


def _dig(tree: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(tree, dict):
            return None
        tree = tree.get(key)
    return tree


def recall_cell(metrics: dict[str, Any] | None) -> str:
    """``4.0 (1.5–7.0)``: t2v R@1 and its 95 % interval; ``4.0`` without an interval."""
    r1 = _dig(metrics, "t2v", "R@1")
    if r1 is None:
        return ""
    lo, hi = _dig(metrics, "ci95", "t2v", "R@1_lo"), _dig(metrics, "ci95", "t2v", "R@1_hi")
    return f"{r1:.1f}" if lo is None or hi is None else f"{r1:.1f} ({lo:.1f}–{hi:.1f})"


def metric_columns(rows: Sequence[ExpRow]) -> list[tuple[str, str, Any]]:
    """``(heading, metrics path, how to read the cell)`` of every metric column some row has:
    zero-shot R@1 per dataset, fine-tuned R@1 per task, then patch/token AUC (zero-shot MSRVTT)."""
    present = {path for r in rows for path in r.metrics}
    columns: list[tuple[str, str, Any]] = []
    for dataset in DOWNSTREAM_DATASETS:
        path = layout.metrics_path("zeroshot", dataset, "runs").as_posix()
        if path in present:
            columns.append((f"zero-shot {dataset} R@1", path, recall_cell))
    for task in FINETUNE_TASKS:
        path = layout.metrics_path("finetuned", task, "runs").as_posix()
        if path in present:
            columns.append((f"fine-tuned {task} R@1", path, recall_cell))
    loc_path = layout.metrics_path("zeroshot", layout.ABLATION_EVAL_DATASET, "runs").as_posix()
    if loc_path in present:
        for heading, part, weighting, stat in AUC_COLUMNS:
            columns.append(
                (f"{heading} ({layout.ABLATION_EVAL_DATASET})", loc_path, _auc_reader(part, weighting, stat))
            )
    return columns


def _auc_reader(part: str, weighting: str, stat: str):
    def cell(metrics: dict[str, Any] | None) -> str:
        value = _dig(metrics, "localisation", part, weighting, stat)
        return "" if value is None else f"{value:.2f}"

    return cell


def _param_cell(value: Any) -> str:
    return "" if value is None else layout.format_value(value)


def compare_table(rows: Sequence[ExpRow]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the comparison: experiment, state, differing params, metrics."""
    params = differing_params(rows)
    metrics = metric_columns(rows)
    headers = ["experiment", "state", *params, *(heading for heading, _, _ in metrics)]
    body = []
    for r in rows:
        cells = [r.label, r.state, *(_param_cell(r.params.get(p)) for p in params)]
        for _, path, read in metrics:
            if path in r.stale:
                cells.append("not run")
            elif path in r.metrics and r.metrics[path] is None:
                cells.append("!")
            else:
                cells.append(read(r.metrics.get(path)))
        body.append(cells)
    return headers, body


def render(headers: list[str], body: list[list[str]], fmt: str = "github") -> str:
    """The table as Markdown (``github``), CSV (``csv``) or JSON records (``json``)."""
    if fmt == "json":
        return json.dumps([dict(zip(headers, cells)) for cells in body], indent=2, ensure_ascii=False)
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([headers, *body])
        return buf.getvalue().rstrip("\n")
    from tabulate import tabulate

    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def compare(repo: Path, dvc_args: Sequence[str] = (), fmt: str = "github") -> str:
    """``rap compare``: the rendered table of ``dvc exp show --json DVC_ARGS`` in ``repo``."""
    rows = list(experiment_rows(exp_show_json(repo, dvc_args)))
    mark_stale(rows, repo)
    return render(*compare_table(rows), fmt=fmt)


def mlflow_runs_url(ui: str) -> str:
    """``<ui>/#/experiments/<id>/runs``: the runs table of the MLflow experiment the pipeline logs
    to (:func:`rap.tracking.experiment_name` in :func:`rap.tracking.tracking_uri`)."""
    from mlflow.tracking import MlflowClient

    from rap import tracking

    uri, name = tracking.tracking_uri(), tracking.experiment_name()
    exp = MlflowClient(tracking_uri=uri).get_experiment_by_name(name)
    if exp is None:
        raise CompareError(f"no MLflow experiment {name!r} in {uri}: run the pipeline (dvc repro) first")
    return f"{ui.rstrip('/')}/#/experiments/{exp.experiment_id}/runs"
