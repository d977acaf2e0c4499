"""`rap tables --seeds`: Tables 5 and 9 over several pre-training seeds.

The seed-0 runs are the pipeline's own (main run and ablation runs); the repeats are listed in
params.yaml's ``seed_runs`` (``racl-none+seed-1``, ``seed-2`` = the main setting with seed 2)
and run by ``dvc repro seeds/dvc.yaml`` (or ``snakemake -s workflow/Snakefile seeds``). Each
cell is the mean over the seeds whose metrics exist with its 95 % interval, mean +- t(0.975,
n - 1) * sd / sqrt(n) (``[lo, hi]``), and beside it ``q ±h``: the mean half-width of the single
runs' 95 % bootstrap intervals over queries (R@K and the pooled AUCs). The bootstrap measures
query sampling only; the interval over seeds measures training noise, which a claim about RaCL
has to beat.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Sequence

from scipy.stats import t as student_t
from tabulate import tabulate

from rap.config import Params
from rap.reports import layout
from rap.reports.tables import (
    DIAGNOSTIC_COLUMNS,
    DIRECTION,
    LOCALISATION_COLUMNS,
    MissingMetricsError,
    detect_run_id,
    diagnostic_value,
    localisation_interval,
    localisation_value,
    read_diagnostics,
    read_intervals,
    read_localisation,
    read_metrics,
    setting_label,
)

SEED_TABLES = (5, layout.LOCALISATION_TABLE)


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): the ``level`` interval of the mean over ``values`` (at least two),
    mean +- t(1 - (1 - level) / 2, n - 1) * sd / sqrt(n)."""
    n = len(values)
    if n < 2:
        raise ValueError(f"a t interval needs two values or more, got {n}")
    mean = statistics.mean(values)
    half = float(student_t.ppf(1 - (1 - level) / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    return mean, mean - half, mean + half


def mean_interval(values: Sequence[float], query_half_widths: Sequence[float] = ()) -> str:
    """``"0.23 [0.15, 0.31] q ±0.04"``: the mean with its 95 % t interval over seeds and the mean
    bootstrap half-width over queries; one value: ``"0.23 (n=1)"``; none: ``"-"``."""
    if not values:
        return "-"
    q = f" q ±{statistics.mean(query_half_widths):.2f}" if query_half_widths else ""
    if len(values) == 1:
        return f"{values[0]:.2f} (n=1){q}"
    mean, lo, hi = t_interval(values)
    return f"{mean:.2f} [{lo:.2f}, {hi:.2f}]{q}"


def _columns(table: int) -> list[tuple[str, str]]:
    """(head, what it reads) of a seed table: ``retrieval:<metric>``, ``loc:<index into
    LOCALISATION_COLUMNS>`` or ``diag:<key of the diagnostics block>``."""
    r1 = ("R@1 ↑", "retrieval:R@1")
    if table == 5:
        return [r1, ("R@5 ↑", "retrieval:R@5"), ("R@10 ↑", "retrieval:R@10"), ("MdR ↓", "retrieval:MdR")]
    loc = [(c[0], f"loc:{i}") for i, c in enumerate(LOCALISATION_COLUMNS)]
    return loc + [(head, f"diag:{key}") for head, key in DIAGNOSTIC_COLUMNS] + [r1]


_RECALLS = ("R@1", "R@5", "R@10", "MdR")


def column_values(path: Path, columns: Sequence[tuple[str, str]]) -> list[tuple[float | None, float | None]]:
    """(value, half-width of its bootstrap interval over queries or None) of each column in one
    metrics file (read once)."""
    recalls = read_metrics(path, DIRECTION)
    intervals = read_intervals(path, DIRECTION)
    loc = read_localisation(path)
    diag = read_diagnostics(path)
    out: list[tuple[float | None, float | None]] = []
    for _, column in columns:
        kind, _, key = column.partition(":")
        if kind == "retrieval":
            i = _RECALLS.index(key)
            ci = intervals[i] if intervals is not None and i < len(intervals) else None
            out.append((recalls[i], None if ci is None else (ci[1] - ci[0]) / 2))
        elif kind == "diag":
            out.append((diagnostic_value(diag, key), None))
        else:
            _, part, weighting, stat = LOCALISATION_COLUMNS[int(key)]
            ci = localisation_interval(loc, part, weighting) if stat == "auc" else None
            out.append((localisation_value(loc, part, weighting, stat), None if ci is None else (ci[1] - ci[0]) / 2))
    return out


def seed_table(params: Params, groups: list[layout.SeedGroup], table: int, missing: list[Path]) -> str:
    columns = _columns(table)
    body = []
    for g in groups:
        if table == 5 and g.row.setting.table != 5:  # Table 9's own rows (variant, weight gradient)
            continue
        present = [(s, p) for s, p in zip(g.seeds, g.metrics) if p is not None and p.is_file()]
        missing += [p for p in g.metrics if p is not None and not p.is_file()]
        per_seed = [column_values(p, columns) for _, p in present]
        cells = [
            mean_interval(
                [row[c][0] for row in per_seed if row[c][0] is not None],
                [row[c][1] for row in per_seed if row[c][1] is not None],
            )
            for c in range(len(columns))
        ]
        seeds = ", ".join(str(s) for s, _ in present) or "-"
        body.append([setting_label(g.row), seeds, *cells])
    title = {5: "Ablation of RaCL (eqs. 7-9)", layout.LOCALISATION_TABLE: "Where RaCL's weights point"}[table]
    return (
        "\n\n".join(
            [
                f"# Table {table} over seeds: {title}, zero-shot MSRVTT",
                f"Mean over pre-training seeds with its 95 % t interval over seeds, mean ± t(0.975, n-1) sd / "
                "sqrt(n), as [lo, hi]; 'q ±h': the mean half-width of the single runs' 95 % bootstrap intervals "
                f"over queries (scale `{params.scale}`, run `{detect_run_id()}`). Columns as in "
                f"[../table{table}.md](../table{table}.md). Seed 0 is the pipeline's own run; the others come from "
                "`dvc repro seeds/dvc.yaml` (params.yaml `seed_runs`). A difference between settings holds at this "
                "level only where their seed intervals do not overlap.",
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
