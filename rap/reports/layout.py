"""Where every pipeline output lives: the one map shared by dvc.yaml, the Snakefile and the tables.

Layout under the runs root (default ``runs/``)::

    pretrain/main/                    main pre-training (checkpoint.pt, loss.csv, train_{metrics,run,timings}.json)
    eval/zeroshot/<dataset>.json      zero-shot metrics of the main model
    finetune/<task>/                  fine-tuned models (checkpoint.pt)
    eval/finetuned/<task>.json        their test metrics (msrvtt-7k/9k are tested on MSRVTT 1k-A)
    ablation/<name>/                  ablation pre-trainings (same files)
    eval/ablation/<name>.json         their zero-shot MSRVTT metrics
    seeds/<name>/                     seed repeats of Tables 5 and 9 (``racl-none+seed-1``; seeds/dvc.yaml)
    eval/seeds/<name>.json            their zero-shot MSRVTT metrics
    release/<name>/                   the authors' released files imported (``pretrain`` or a task;
                                      release/dvc.yaml, only where a user placed them: rap.release)
    eval/release/<recipe>-recipe/zeroshot/<dataset>.json   their evaluations with evaluate.recipe
    eval/release/<recipe>-recipe/finetuned/<task>.json     (release, rap): rows of Tables 1-4

Ablation runs (paper Tables 5-7, and Table 8 for MAC) are listed by name in params.yaml's
``ablations`` (``racl-none``, ``frames-2``, ``lambda-2.0``, ``mask-0.75``, ...); each is the
paper's main setting :data:`rap.config.REFERENCE_KNOBS` with one knob changed
(:func:`rap.config.ablation_overrides`). The reference value of every ablated knob (RaCL both,
4 frames, lambda 1.0, r_v 0.0: the paper's "RaP" rows) is not trained again: it is the main
run, provided the main run's knobs equal the reference; otherwise that row has no run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# ablation_overrides (run name -> knobs) lives in rap.config and is re-exported from here.
from rap.config import (
    KNOB_BY_RUN_PREFIX,
    REFERENCE_KNOBS,
    ConfigError,
    Params,
    ablation_overrides,
    split_ablation_name,
)
from rap.registry import DOWNSTREAM_DATASETS, FINETUNE, FINETUNE_TASKS
from rap.release import PRETRAINED, RECIPES, RELEASE_DIR, RELEASED_FILES, RELEASED_TASKS
from rap.run_files import TRAIN_METRICS

MAIN_RUN = "main"
# The dataset every ablation is evaluated on (paper Tables 5-7: zero-shot MSRVTT).
ABLATION_EVAL_DATASET = "msrvtt"
# Report table of each ablation name prefix (Table 8, MAC mask ratio, and Table 9, where the
# redundancy weights point, are this project's additions).
ABLATION_TABLES: dict[str, int] = {"racl": 5, "frames": 6, "lambda": 7, "mask": 8, "variant": 9, "weightgrad": 9}
# Table 9 also holds every row of Table 5 (RaCL directions), so its own knobs add no main row.
LOCALISATION_TABLE = 9
REPORT_TABLES = tuple(range(1, LOCALISATION_TABLE + 1))
# Row order of the RaCL table as in the paper (numeric knobs are sorted ascending).
_RACL_ORDER = ("none", "v2t", "t2v", "both")


@dataclass(frozen=True)
class AblationSetting:
    """One row of an ablation table (5-8): a knob value and the run that provides it."""

    name: str  # run name, e.g. "lambda-2.0"; for the reference value "<prefix>-<value> (main)"
    knob: str  # top-level knob, e.g. "lambda"
    value: Any  # typed value, e.g. 2.0
    table: int
    is_main: bool  # the reference value: provided by the main run
    run_dir: Path | None  # checkpoint.pt, train_metrics.json; None: no run provides this row
    metrics: Path | None  # zero-shot MSRVTT metrics JSON; None as above


def format_value(value: Any) -> str:
    """Display text of a knob value (floats keep their ``.0``: 1.0, not 1)."""
    return repr(value) if isinstance(value, float) else str(value)


def main_is_reference(params: Params) -> bool:
    """True when the main run was trained with the paper's main setting, so that it can stand
    for the reference rows of the ablation tables."""
    return all(params.knobs.get(k) == v for k, v in REFERENCE_KNOBS.items())


# --------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------


def run_dir(kind: str, name: str, root: str | Path = "runs") -> Path:
    """Directory of a training run: ``kind`` in pretrain (name ``main``), finetune (a task),
    ablation (an ablation run name)."""
    root = Path(root)
    if kind == "pretrain":
        if name != MAIN_RUN:
            raise ConfigError(
                f"run_dir('pretrain', {name!r}): the only pre-training run is {MAIN_RUN!r}; "
                "ablation pre-trainings live under kind 'ablation'"
            )
        return root / "pretrain" / MAIN_RUN
    if kind == "finetune":
        _check_task(name)
        return root / "finetune" / name
    if kind == "ablation":
        ablation_overrides(name)  # validates the name
        return root / "ablation" / name
    if kind == "seed":
        _check_seed_run(name)
        return root / "seeds" / name
    raise ConfigError(f"run_dir: unknown kind {kind!r}; expected pretrain, finetune, ablation or seed")


def checkpoint_path(kind: str, name: str, root: str | Path = "runs") -> Path:
    return run_dir(kind, name, root) / "checkpoint.pt"


def train_metrics_path(kind: str, name: str, root: str | Path = "runs") -> Path:
    """``train_metrics.json`` of a training run (final losses, FLOPs per step; Table 8): a DVC
    metrics file that reproduces."""
    return run_dir(kind, name, root) / TRAIN_METRICS


def metrics_path(kind: str, name: str, root: str | Path = "runs") -> Path:
    """Metrics JSON: ``kind`` zeroshot (name = dataset), finetuned (name = task),
    ablation (name = ablation run)."""
    root = Path(root)
    if kind == "zeroshot":
        if name not in DOWNSTREAM_DATASETS:
            raise ConfigError(f"metrics_path('zeroshot', {name!r}): dataset must be one of {DOWNSTREAM_DATASETS}")
        return root / "eval" / "zeroshot" / f"{name}.json"
    if kind == "finetuned":
        _check_task(name)
        return root / "eval" / "finetuned" / f"{name}.json"
    if kind == "ablation":
        ablation_overrides(name)
        return root / "eval" / "ablation" / f"{name}.json"
    if kind == "seed":
        _check_seed_run(name)
        return root / "eval" / "seeds" / f"{name}.json"
    raise ConfigError(f"metrics_path: unknown kind {kind!r}; expected zeroshot, finetuned, ablation or seed")


def _check_seed_run(name: str) -> None:
    """Seed repeats (params.yaml ``seed_runs``) live apart from the ablation grid, so that running
    them changes no input of the default pipeline."""
    ablation_overrides(name)
    if split_ablation_name(name)[1] is None:
        raise ConfigError(f"seed run {name!r} has no +seed-<N> part")


def task_dataset(task: str) -> str:
    """Dataset a fine-tuning task is tested on: msrvtt-7k and msrvtt-9k both use MSRVTT 1k-A."""
    _check_task(task)
    return FINETUNE[task].dataset


def _check_task(task: str) -> None:
    if task not in FINETUNE_TASKS:
        raise ConfigError(f"unknown fine-tuning task {task!r}; expected one of {FINETUNE_TASKS}")


# --------------------------------------------------------------------------------------
# Ablation grid
# --------------------------------------------------------------------------------------


def ablation_table(name: str) -> int:
    """Report table of an ablation run name (validated by :func:`rap.config.ablation_overrides`)."""
    ablation_overrides(name)
    base, _ = split_ablation_name(name)
    return ABLATION_TABLES[base.partition("-")[0]] if base else ABLATION_TABLES["racl"]


def ablation_run_names(params: Params) -> list[str]:
    """The ablation pre-trainings to run, as listed in params.yaml (dvc.yaml's foreach keys)."""
    return list(params.ablations)


def ablation_settings(params: Params, root: str | Path = "runs", table: int | None = None) -> list[AblationSetting]:
    """Rows of the ablation tables (5-8): per table the reference value (the main run) and every
    listed ablation run of that knob, ordered as in the paper (RaCL) or by value."""
    root = Path(root)
    main_ok = main_is_reference(params)
    out: list[AblationSetting] = []
    for prefix, tab in ABLATION_TABLES.items():
        if table is not None and tab != table:
            continue
        knob = KNOB_BY_RUN_PREFIX[prefix].name
        ref = REFERENCE_KNOBS[knob]
        rows = []
        if tab != LOCALISATION_TABLE:
            rows.append(
                AblationSetting(
                    f"{prefix}-{format_value(ref)} (main)",
                    knob,
                    ref,
                    tab,
                    True,
                    run_dir("pretrain", MAIN_RUN, root) if main_ok else None,
                    metrics_path("zeroshot", ABLATION_EVAL_DATASET, root) if main_ok else None,
                )
            )
        for name in params.ablations:
            if name.partition("-")[0] == prefix:
                value = ablation_overrides(name)[knob]
                rows.append(
                    AblationSetting(
                        name,
                        knob,
                        value,
                        tab,
                        False,
                        run_dir("ablation", name, root),
                        metrics_path("ablation", name, root),
                    )
                )
        rows.sort(key=lambda r: _RACL_ORDER.index(r.value) if knob == "racl" else r.value)
        out.extend(rows)
    return out


def zeroshot_datasets(params: Params) -> tuple[str, ...]:
    return tuple(d for d in params.cfg.evaluate.zero_shot if d in DOWNSTREAM_DATASETS)


def finetune_tasks(params: Params) -> tuple[str, ...]:
    return tuple(params.cfg.finetune.tasks)


# --------------------------------------------------------------------------------------
# (table, row) -> metrics file: what the report tables read
# --------------------------------------------------------------------------------------

# Paper Tables 1-4: dataset of each table and the blocks it has (block -> fine-tuning task or None).
RESULT_TABLES: dict[int, tuple[str, tuple[tuple[str, str | None], ...]]] = {
    1: (
        "msrvtt",
        (
            ("Zero-shot", None),
            ("Fine-tuning on 7k training videos", "msrvtt-7k"),
            ("Fine-tuning on 9k training videos", "msrvtt-9k"),
        ),
    ),
    2: ("didemo", (("Zero-shot", None), ("Fine-tuning", "didemo"))),
    3: ("msvd", (("Zero-shot", None), ("Fine-tuning", "msvd"))),
    4: ("lsmdc", (("Zero-shot", None), ("Fine-tuning", "lsmdc"))),
}


@dataclass(frozen=True)
class TableRow:
    """One row of this run in a report table and the file it is read from."""

    table: int
    block: str  # the paper's block ("Zero-shot", "Fine-tuning", ...); Tables 5-8: "Zero-shot"
    key: str  # row key: dataset / task for Tables 1-4, ablation run name for Tables 5-8
    metrics: Path | None  # None: no run provides the row (main run not at the reference setting)
    train_metrics: Path | None = None  # train_metrics.json: FLOPs per step (Table 8 only)
    setting: AblationSetting | None = None


def table_rows(params: Params, root: str | Path = "runs") -> dict[int, list[TableRow]]:
    """This run's rows of every report table (1-9) with the files they come from.

    Tables 1-4: a zero-shot row when the dataset is in ``evaluate.zero_shot``, a fine-tuned row
    per task in ``finetune.tasks``; Tables 5-8: one row per grid point of the ablation."""
    rows: dict[int, list[TableRow]] = {t: [] for t in REPORT_TABLES}
    zs = zeroshot_datasets(params)
    tasks = finetune_tasks(params)
    for table, (dataset, blocks) in RESULT_TABLES.items():
        for block, task in blocks:
            if task is None and dataset in zs:
                rows[table].append(TableRow(table, block, dataset, metrics_path("zeroshot", dataset, root)))
            elif task is not None and task in tasks:
                rows[table].append(TableRow(table, block, task, metrics_path("finetuned", task, root)))
    for s in ablation_settings(params, root):
        flops = s.table == 8 and s.run_dir is not None
        rows[s.table].append(
            TableRow(
                s.table,
                "Zero-shot",
                s.name,
                s.metrics,
                s.run_dir / TRAIN_METRICS if flops else None,
                s,
            )
        )
    rows[LOCALISATION_TABLE] = [
        dataclasses.replace(r, table=LOCALISATION_TABLE) for r in rows[ABLATION_TABLES["racl"]]
    ] + rows[LOCALISATION_TABLE]
    return rows


# --------------------------------------------------------------------------------------
# The authors' released checkpoints (release/dvc.yaml; rap.release): placed, imported, evaluated
# --------------------------------------------------------------------------------------

RELEASE_KINDS = ("zeroshot", "finetuned")


def release_file(name: str, data_root: str | Path) -> Path:
    """Where a user places the released file of ``name`` (``pretrain`` or a task):
    ``<data.root>/release/<its published name>``."""
    if name not in RELEASED_FILES:
        raise ConfigError(f"release_file({name!r}): the release published files for {tuple(RELEASED_FILES)}")
    return Path(data_root) / RELEASE_DIR / RELEASED_FILES[name]


def release_checkpoint_path(name: str, root: str | Path = "runs") -> Path:
    """The rap checkpoint ``rap import-release`` writes from the released file of ``name``."""
    if name not in RELEASED_FILES:
        raise ConfigError(f"release_checkpoint_path({name!r}): expected one of {tuple(RELEASED_FILES)}")
    return Path(root) / "release" / name / "checkpoint.pt"


def release_metrics_path(recipe: str, kind: str, name: str, root: str | Path = "runs") -> Path:
    """Metrics of a released file evaluated with ``evaluate.recipe: <recipe>``: ``kind``
    zeroshot (the pre-trained file; name = dataset) or finetuned (name = a released task)."""
    if recipe not in RECIPES:
        raise ConfigError(f"release_metrics_path: recipe must be one of {RECIPES}, got {recipe!r}")
    names = {"zeroshot": DOWNSTREAM_DATASETS, "finetuned": RELEASED_TASKS}.get(kind)
    if names is None:
        raise ConfigError(f"release_metrics_path: kind must be one of {RELEASE_KINDS}, got {kind!r}")
    if name not in names:
        raise ConfigError(f"release_metrics_path({recipe!r}, {kind!r}, {name!r}): expected one of {names}")
    return Path(root) / "eval" / "release" / f"{recipe}-recipe" / kind / f"{name}.json"


@dataclass(frozen=True)
class ReleaseRow:
    """A row "authors' checkpoint, evaluated by rap (<recipe> recipe)" of Tables 1-4."""

    table: int
    block: str
    recipe: str
    name: str | None  # the released file's import name; None: the release has no file for this block
    file: Path | None  # where a user places that file
    metrics: Path | None  # its evaluation's metrics (written by release/dvc.yaml)


def release_rows(params: Params, root: str | Path = "runs") -> dict[int, list[ReleaseRow]]:
    """The released files' rows of Tables 1-4, per block and recipe: the pre-trained file
    evaluated zero-shot, each fine-tuned file on its task. Unlike this run's rows they do not
    follow ``evaluate.zero_shot`` / ``finetune.tasks``: they are the release's, not this run's."""
    rows: dict[int, list[ReleaseRow]] = {}
    for table, (dataset, blocks) in RESULT_TABLES.items():
        rows[table] = []
        for block, task in blocks:
            kind, key = ("zeroshot", dataset) if task is None else ("finetuned", task)
            name = PRETRAINED if task is None else task if task in RELEASED_TASKS else None
            for recipe in RECIPES:
                rows[table].append(
                    ReleaseRow(
                        table,
                        block,
                        recipe,
                        name,
                        None if name is None else release_file(name, params.cfg.data.root),
                        None if name is None else release_metrics_path(recipe, kind, key, root),
                    )
                )
    return rows


def release_evaluations() -> list[tuple[str, str, str]]:
    """Every evaluation of the released files as ``(recipe, kind, name)``, in the order of
    release/dvc.yaml: the pre-trained file zero-shot on each dataset, each fine-tuned file on
    its task, each with every recipe."""
    out = [(r, "zeroshot", d) for r in RECIPES for d in DOWNSTREAM_DATASETS]
    return out + [(r, "finetuned", t) for r in RECIPES for t in RELEASED_TASKS]


def release_inputs(root: str | Path = "runs") -> list[Path]:
    """Every metrics file of the release pipeline (the Snakemake target ``release``)."""
    return [release_metrics_path(r, k, n, root) for r, k, n in release_evaluations()]


@dataclass(frozen=True)
class SeedGroup:
    """One setting of Tables 5 / 9 over several seeds: the seed-0 row and its repeats."""

    row: TableRow  # the seed-0 row of Table 9 (the main run or an ablation run)
    seeds: tuple[int, ...]  # seed of each metrics file, 0 first
    metrics: tuple[Path | None, ...]  # zero-shot MSRVTT metrics JSON per seed


def seed_run_name(base: str, seed: int) -> str:
    """``("racl-none", 1)`` -> ``"racl-none+seed-1"``; the main setting: ``("", 2)`` -> ``"seed-2"``."""
    return f"{base}+seed-{seed}" if base else f"seed-{seed}"


def seed_groups(params: Params, root: str | Path = "runs") -> list[SeedGroup]:
    """Every Table 9 row (which holds Table 5's) with the seed repeats ``seed_runs`` lists for it."""
    root = Path(root)
    by_base: dict[str, list[int]] = {}
    for name in params.seed_runs:
        base, seed = split_ablation_name(name)
        by_base.setdefault(base, []).append(int(seed))
    out = []
    for row in table_rows(params, root)[LOCALISATION_TABLE]:
        assert row.setting is not None
        base = "" if row.setting.is_main else row.setting.name
        repeats = sorted(by_base.get(base, []))
        paths = [row.metrics] + [metrics_path("seed", seed_run_name(base, n), root) for n in repeats]
        out.append(SeedGroup(row, (params.seed, *repeats), tuple(paths)))
    return out


def seed_report_inputs(params: Params, root: str | Path = "runs") -> list[Path]:
    """Every metrics file the seed tables read (the seeds pipeline's dependencies)."""
    return sorted({p for g in seed_groups(params, root) for p in g.metrics if p is not None})


def table_metrics_path(params: Params, table: int, key: str, root: str | Path = "runs") -> Path | None:
    """(table, row key) -> metrics JSON, e.g. ``(1, "msrvtt-7k")``, ``(5, "racl-none")``,
    ``(5, "racl-both (main)")``; None for a reference row the main run cannot provide."""
    for row in table_rows(params, root).get(table, []):
        if row.key == key:
            return row.metrics
    keys = [r.key for r in table_rows(params, root).get(table, [])]
    raise ConfigError(f"table {table} has no row {key!r} for these params; rows: {keys}")


def report_inputs(params: Params, root: str | Path = "runs") -> list[Path]:
    """Every reproducible file `rap tables` reads (metrics JSONs, Table 8's train metrics),
    sorted and without duplicates: the dependencies of the tables stage / rule."""
    paths: set[Path] = set()
    for rows in table_rows(params, root).values():
        for row in rows:
            paths.update(p for p in (row.metrics, row.train_metrics) if p is not None)
    return sorted(paths)
