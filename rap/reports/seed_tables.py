"""`rap tables --seeds`: Tables 5 and 9 over several pre-training seeds, mean +- sd.

The seed-0 runs are the pipeline's own (main run and ablation runs); the repeats are listed in
params.yaml's ``seed_runs`` (``racl-none+seed-1``, ``seed-2`` = the main setting with seed 2)
and run by ``dvc repro seeds/dvc.yaml``. Each cell is the mean +- the sample standard deviation
(n - 1) over the seeds whose metrics exist; n is printed. Bootstrap intervals of single runs
measure query sampling only; the spread over seeds measures training noise, which a claim about
RaCL has to beat.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Sequence

from tabulate import tabulate

from rap.config import Params
from rap.reports import layout
from rap.reports.tables import (
    DIRECTION,
    LOCALISATION_COLUMNS,
    MissingMetricsError,
    detect_run_id,
    localisation_value,
    read_localisation,
    read_metrics,
    setting_label,
)

SEED_TABLES = (5, layout.LOCALISATION_TABLE)


def mean_sd(values: Sequence[float]) -> str:
    """``"12.3 ± 1.5 (n=3)"``; one value: ``"12.3 (n=1)"``; none: ``"-"``."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f} (n=1)"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


def _columns(table: int) -> list[tuple[str, str]]:
    """(head, what it reads) of a seed table: ``retrieval:<metric>`` or ``loc:<index into
    LOCALISATION_COLUMNS>``."""
    r1 = ("R@1 ↑", "retrieval:R@1")
    if table == 5:
        return [r1, ("R@5 ↑", "retrieval:R@5"), ("R@10 ↑", "retrieval:R@10"), ("MdR ↓", "retrieval:MdR")]
    return [(c[0], f"loc:{i}") for i, c in enumerate(LOCALISATION_COLUMNS)] + [r1]


def _values(path: Path, columns: Sequence[tuple[str, str]]) -> list[float | None]:
    """The value of each column in one metrics file (read once)."""
    recalls = read_metrics(path, DIRECTION)
    loc = read_localisation(path)
    out: list[float | None] = []
    for _, column in columns:
        kind, _, key = column.partition(":")
        if kind == "retrieval":
            out.append(recalls[("R@1", "R@5", "R@10", "MdR").index(key)])
        else:
            out.append(localisation_value(loc, *LOCALISATION_COLUMNS[int(key)][1:]) if loc else None)
    return out


def seed_table(params: Params, groups: list[layout.SeedGroup], table: int, missing: list[Path]) -> str:
    columns = _columns(table)
    body = []
    for g in groups:
        if table == 5 and g.row.setting.table != 5:  # Table 9's own rows (variant, weight gradient)
            continue
        present = [(s, p) for s, p in zip(g.seeds, g.metrics) if p is not None and p.is_file()]
        missing += [p for p in g.metrics if p is not None and not p.is_file()]
        per_seed = [_values(p, columns) for _, p in present]
        cells = [mean_sd([row[c] for row in per_seed if row[c] is not None]) for c in range(len(columns))]
        seeds = ", ".join(str(s) for s, _ in present) or "-"
        body.append([setting_label(g.row), seeds, *cells])
    title = {5: "Ablation of RaCL (eqs. 7-9)", layout.LOCALISATION_TABLE: "Where RaCL's weights point"}[table]
    return (
        "\n\n".join(
            [
                f"# Table {table} over seeds: {title}, zero-shot MSRVTT",
                f"Mean ± sample sd over pre-training seeds (scale `{params.scale}`, run `{detect_run_id()}`); "
                f"columns as in [../table{table}.md](../table{table}.md). Seed 0 is the pipeline's own run; the "
                "others come from `dvc repro seeds/dvc.yaml` (params.yaml `seed_runs`).",
                tabulate(
                    body,
                    headers=["Pre-training", "Seeds", *[c[0] for c in columns]],
                    tablefmt="github",
                    disable_numparse=True,
                    colalign=("left", "left") + ("right",) * len(columns),
                ),
            ]
        )
        + "\n"
    )


def write_seed_tables(params: Params, metrics_root: Path, out_dir: Path, *, allow_missing: bool = False) -> list[Path]:
    """Write ``table5.md`` and ``table9.md`` (over seeds) into ``out_dir``; a missing metrics
    file raises :class:`MissingMetricsError` unless ``allow_missing``. Nothing is written on error."""
    groups = layout.seed_groups(params, Path(metrics_root))
    missing: list[Path] = []
    texts = {t: seed_table(params, groups, t, missing) for t in SEED_TABLES}
    if missing and not allow_missing:
        names = sorted({p.as_posix() for p in missing})
        raise MissingMetricsError(f"{len(names)} file(s) needed by the seed tables are missing: " + ", ".join(names))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for table, text in texts.items():
        paths.append(out_dir / f"table{table}.md")
        paths[-1].write_text(text, encoding="utf-8")
    return paths
