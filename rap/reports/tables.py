"""`rap tables`: the paper's Tables 1-7 with this run's rows beside the published ones, and Table 8.

Each ``reports/tableN.md`` follows the paper's layout: one block per setting (zero-shot,
fine-tuned), text-to-video R@1 / R@5 / R@10 (%) and median rank MdR. Under the paper's RaP row
comes this run's row, labelled with the scale and a run id (the DVC experiment name, else the
git revision); at the paper scale a third row gives the difference this run - paper. Tables
5-7 (ablations, zero-shot MSRVTT) interleave the paper's row and this run's row per setting.
Table 8 is beyond the paper: the MAC mask ratio r_v against pre-training speed (step time,
clips/s, FLOPs) and zero-shot MSRVTT R@1.

Which file feeds which row is decided by :mod:`rap.reports.layout` (shared with dvc.yaml and
the Snakefile). Output is a pure function of the inputs (no timestamps, absolute paths or
dictionary-order effects), so the same metrics give the same bytes.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tabulate import tabulate

from rap.config import PRETRAIN_SOURCES, REFERENCE_KNOBS, Params
from rap.errors import RapError
from rap.reports import layout
from rap.reports.layout import TableRow, format_value
from rap.reports.paper_results import (DATA_SYMBOLS, TABLE_TITLES, PaperRow, paper_blocks, paper_rap_row,
                                       paper_rows)

METRIC_KEYS = ("R@1", "R@5", "R@10", "MdR")
DIRECTION = "t2v"  # the paper reports text-to-video retrieval only
# train_summary.json keys read for Table 8 (written by rap.training.loop); flops_per_step is optional.
SUMMARY_KEYS = ("wall_time_s", "steps", "clips_per_s")
TABLE8_TITLE = "MAC mask sampling: video mask ratio r_v vs pre-training speed and zero-shot MSRVTT"
_ABLATION_HEAD = {5: "RaCL", 6: "#frames K", 7: "lambda"}
_MISSING = "missing"
_NO_RUN = "n/a"


class MissingMetricsError(RapError, FileNotFoundError):
    """A metrics or training-summary file the tables need does not exist."""


class BadMetricsError(RapError, ValueError):
    """A metrics file exists but lacks a key or holds a non-numeric value."""


@dataclass(frozen=True)
class RunMetrics:
    """The four numbers the paper reports (text-to-video), or None with the text shown instead."""

    values: tuple[float, float, float, float] | None
    absent: str = _MISSING  # "missing" (file not there) or "n/a" (no run provides the row)


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def read_metrics(path: Path, direction: str = DIRECTION) -> tuple[float, float, float, float]:
    """``(R@1, R@5, R@10, MdR)`` of one direction from a metrics JSON written by `rap evaluate`."""
    data = _read_json(path)
    block = data.get(direction)
    if not isinstance(block, dict):
        raise BadMetricsError(f"{path}: no {direction!r} block (keys: {sorted(data)})")
    out = []
    for key in METRIC_KEYS:
        value = block.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BadMetricsError(f"{path}: {direction}.{key} must be a finite number, got {value!r}")
        out.append(float(value))
    return tuple(out)  # type: ignore[return-value]


def read_summary(path: Path) -> dict[str, float | None]:
    """Speed numbers of a pre-training run (Table 8) from its ``train_summary.json``."""
    data = _read_json(path)
    out: dict[str, float | None] = {}
    for key in SUMMARY_KEYS + ("flops_per_step",):
        value = data.get(key)
        if value is None and key == "flops_per_step":
            out[key] = None
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BadMetricsError(f"{path}: {key!r} must be a finite number, got {value!r}")
        out[key] = float(value)
    if out["steps"] <= 0:
        raise BadMetricsError(f"{path}: 'steps' must be > 0, got {data['steps']!r}")
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingMetricsError(f"{path}: metrics file not found (has its pipeline stage run?)") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadMetricsError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise BadMetricsError(f"{path}: must hold a JSON object")
    return data


def detect_run_id(cwd: Path | None = None) -> str:
    """The DVC experiment name when run under `dvc exp run`, else the short git revision
    (with ``-dirty`` when tracked files differ from it), else ``unversioned``."""
    exp = os.environ.get("DVC_EXP_NAME")
    if exp:
        return exp
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, check=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unversioned"
    return f"{rev}-dirty" if dirty else rev


# --------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _fmt_diff(mine: float | None, paper: float | None) -> str:
    if mine is None or paper is None:
        return "-"
    # from the value as displayed, so that the row reads as the difference of the two rows above
    d = round(float(_fmt(mine)) - paper, 1)
    return "0.0" if d == 0 else f"{d:+.1f}"


def _cells(m: RunMetrics) -> list[str]:
    return [m.absent] * 4 if m.values is None else [_fmt(v) for v in m.values]


def _diff_cells(m: RunMetrics, paper: PaperRow) -> list[str]:
    if m.values is None:
        return ["-"] * 4
    return [_fmt_diff(a, b) for a, b in zip(m.values, paper.values)]


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True,
                    colalign=("left",) * (len(headers) - 4) + ("right",) * 4)


class _Context:
    """What every table needs: params, runs root, run label; collects the missing files."""

    def __init__(self, params: Params, metrics_root: Path, run_id: str) -> None:
        self.params = params
        self.root = metrics_root
        self.run_id = run_id
        self.rows = layout.table_rows(params, metrics_root)
        self.at_paper_scale = params.scale == "paper"
        self.label = f"RaP (this run, {params.scale}, {run_id})"
        self.missing: list[Path] = []

    def metrics(self, row: TableRow) -> RunMetrics:
        if row.metrics is None:
            return RunMetrics(None, _NO_RUN)
        if not row.metrics.is_file():
            self.missing.append(row.metrics)
            return RunMetrics(None)
        return RunMetrics(read_metrics(row.metrics))

    def summary(self, row: TableRow) -> dict[str, float | None] | None:
        if row.summary is None:
            return None
        if not row.summary.is_file():
            self.missing.append(row.summary)
            return None
        return read_summary(row.summary)

    def rel(self, path: Path) -> str:
        """Path relative to the runs root: stable text whatever directory the runs live in."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.as_posix()

    def data_symbol(self) -> str:
        """Pre-training data of this run in the paper's notation."""
        cfg = self.params.cfg
        if cfg.data.source == "public" and set(cfg.pretrain.sources) == set(PRETRAIN_SOURCES):
            return "♣"
        return f"{cfg.data.source} {'+'.join(cfg.pretrain.sources)}"


# --------------------------------------------------------------------------------------
# Tables 1-4: result tables with baselines
# --------------------------------------------------------------------------------------


def _result_table(ctx: _Context, table: int) -> str:
    mine = {r.block: r for r in ctx.rows[table]}
    parts = [_header(table, TABLE_TITLES[table], ctx)]
    sources = []
    for block in paper_blocks(table):
        body = [[r.label, r.data or "", *[_fmt(v) for v in r.values]] for r in paper_rows(table, block)]
        row = mine.get(block)
        if row is None:
            why = "not in evaluate.zero_shot" if block == "Zero-shot" else "task not in finetune.tasks"
            body.append([f"{ctx.label}: not run ({why})", "", "-", "-", "-", "-"])
        else:
            m = ctx.metrics(row)
            body.append([f"**{ctx.label}**", ctx.data_symbol(), *_cells(m)])
            paper = paper_rap_row(table, block)
            if ctx.at_paper_scale and paper is not None:
                body.append(["Δ (this run − paper RaP)", "", *_diff_cells(m, paper)])
            sources.append(f"{block}: `{ctx.rel(row.metrics)}`")
        parts.append(f"## {block}\n\n" + _md_table(["Method", "Data", "R@1 ↑", "R@5 ↑", "R@10 ↑", "MdR ↓"], body))
    symbols = sorted({r.data for r in paper_rows(table) if r.data}, key=list(DATA_SYMBOLS).index)
    notes = ["Pre-training data: " + "; ".join(f"{s} {DATA_SYMBOLS[s]}" for s in symbols) + "."]
    if sources:
        notes.append("This run's metrics (under the runs root): " + "; ".join(sources) + ".")
    parts.append("\n".join(notes))
    return "\n\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------
# Tables 5-7: ablations (zero-shot MSRVTT)
# --------------------------------------------------------------------------------------


def _origin(row: TableRow) -> str:
    assert row.setting is not None
    return "main run" if row.setting.is_main else row.setting.name


def _reference_note(ctx: _Context, rows: Sequence[TableRow]) -> list[str]:
    """Why a reference row reads n/a: the main run was not trained at the paper's main setting."""
    if all(r.metrics is not None for r in rows):
        return []
    knobs = ", ".join(f"{k}={format_value(v)}" for k, v in sorted(ctx.params.knobs.items()))
    ref = ", ".join(f"{k}={format_value(v)}" for k, v in sorted(REFERENCE_KNOBS.items()))
    return [f"n/a: the main run ({knobs}) is not at the paper's main setting ({ref}), so no run provides "
            "the reference row."]


def _ablation_table(ctx: _Context, table: int) -> str:
    rows = ctx.rows[table]
    mine = {r.setting.value: r for r in rows if r.setting is not None}
    body: list[list[str]] = []
    shown: set = set()

    def add_mine(value: Any, paper: PaperRow | None) -> None:
        row = mine[value]
        m = ctx.metrics(row)
        body.append([format_value(value), f"**{ctx.label}** [{_origin(row)}]", *_cells(m)])
        if ctx.at_paper_scale and paper is not None:
            body.append([format_value(value), "Δ (this run − paper)", *_diff_cells(m, paper)])

    for paper in paper_rows(table):
        name = paper.method + (" (RaP)" if paper.ours and "RaP" not in paper.method else "")
        body.append([format_value(paper.setting), f"paper: {name}", *[_fmt(v) for v in paper.values]])
        if paper.setting in mine:
            add_mine(paper.setting, paper)
            shown.add(paper.setting)
    for value in mine:  # settings the paper did not report
        if value not in shown:
            add_mine(value, None)
    parts = [_header(table, TABLE_TITLES[table], ctx),
             "## Zero-shot\n\n" + _md_table([_ABLATION_HEAD[table], "Source", "R@1 ↑", "R@5 ↑", "R@10 ↑", "MdR ↓"],
                                             body)]
    sources = [f"`{ctx.rel(r.metrics)}`" for r in rows if r.metrics is not None]
    notes = ["This run's metrics (under the runs root): " + "; ".join(sources) + "."] if sources else []
    parts.append("\n".join(notes + _reference_note(ctx, rows)))
    return "\n\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------
# Table 8: MAC mask ratio vs speed
# --------------------------------------------------------------------------------------


def _table8(ctx: _Context) -> str:
    rows = ctx.rows[8]
    collected = [(r, ctx.summary(r), ctx.metrics(r)) for r in rows]
    base = next((s for r, s, _ in collected if r.setting is not None and r.setting.is_main and s), None)
    body = []
    for r, s, m in collected:
        assert r.setting is not None
        if s is None:
            speed = [_NO_RUN if r.summary is None else _MISSING] * 5
        else:
            flops = s["flops_per_step"]
            speed = [
                f"{s['wall_time_s'] / s['steps']:.3f}",
                f"{s['clips_per_s']:.1f}",
                "-" if base is None else f"{s['clips_per_s'] / base['clips_per_s']:.2f}x",
                "-" if flops is None else f"{flops / 1e9:.1f}",
                f"{s['wall_time_s'] / 60:.1f}",
            ]
        r1, mdr = (m.absent, m.absent) if m.values is None else (_fmt(m.values[0]), _fmt(m.values[3]))
        body.append([format_value(r.setting.value), _origin(r), *speed, r1, mdr])
    ref = format_value(REFERENCE_KNOBS["mask_video"])
    headers = ["r_v", "Run", "Wall time / step (s)", "Clips/s", f"Speed-up vs r_v={ref}", "GFLOPs/step",
               "Wall time (min)", "R@1 ↑", "MdR ↓"]
    text = [_header(8, TABLE8_TITLE, ctx),
            "Not in the RaP paper. MAC masks a random subset of video patches in every frame during "
            "pre-training (evaluation is unmasked); the MAC paper reports 60% fewer FLOPs and 3x faster "
            "pre-training. Speed is measured on this run's hardware (wall time includes data loading and "
            "checkpointing; clips/s = training clips / wall time); zero-shot MSRVTT text-to-video.",
            tabulate(body, headers=headers, tablefmt="github", disable_numparse=True,
                     colalign=("left", "left") + ("right",) * 7)]
    sources = [f"`{ctx.rel(r.metrics)}`, `{ctx.rel(r.summary)}`" for r in rows
               if r.metrics is not None and r.summary is not None]
    notes = ["This run's files (under the runs root): " + "; ".join(sources) + "."] if sources else []
    text.append("\n".join(notes + _reference_note(ctx, rows)))
    return "\n\n".join(text) + "\n"


# --------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------


def _header(table: int, title: str, ctx: _Context) -> str:
    lines = [f"# Table {table}: {title}", ""]
    lines.append(f"Text-to-video retrieval; R@K in %, MdR = median rank. This run: scale `{ctx.params.scale}`, "
                 f"run `{ctx.run_id}`.")
    if table <= 7:
        lines.append(f"Paper rows: RaP paper, Table {table}, as printed ('-' = not reported).")
        lines.append("Δ rows: this run − the paper's row." if ctx.at_paper_scale else
                     f"No differences to the paper: at the `{ctx.params.scale}` scale the numbers are not "
                     "comparable (they are shown at the `paper` scale only).")
    return "\n".join(lines)


def _readme(ctx: _Context, files: list[Path]) -> str:
    lines = ["# Reports", "",
             f"Generated by `rap tables` from the pipeline's metrics files; scale `{ctx.params.scale}`, "
             f"run `{ctx.run_id}`.", ""]
    titles = {**TABLE_TITLES, 8: TABLE8_TITLE}
    for i, path in enumerate(files, start=1):
        lines.append(f"- [Table {i}]({path.name}): {titles[i]}")
    lines.append("- [Figure 3](figure3.png): redundancy weights of patches and tokens, RaCL vs w/o RaCL "
                 "(`rap figure`)")
    return "\n".join(lines) + "\n"


def write_tables(params: Params, metrics_root: Path, out_dir: Path, *, run_id: str | None = None,
                 allow_missing: bool = False) -> list[Path]:
    """Write ``table1.md`` ... ``table8.md`` and ``README.md`` into ``out_dir``.

    ``metrics_root`` is the runs root of :mod:`rap.reports.layout`. A missing metrics or summary
    file raises :class:`MissingMetricsError` naming every missing file, unless
    ``allow_missing`` (then its cells read ``missing``). Nothing is written on error.
    """
    ctx = _Context(params, Path(metrics_root), run_id or detect_run_id())
    texts = [_result_table(ctx, t) for t in (1, 2, 3, 4)]
    texts += [_ablation_table(ctx, t) for t in (5, 6, 7)]
    texts.append(_table8(ctx))
    if ctx.missing and not allow_missing:
        missing = sorted({p.as_posix() for p in ctx.missing})
        raise MissingMetricsError(f"{len(missing)} file(s) needed by the tables are missing: " + ", ".join(missing))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"table{i}.md" for i in range(1, 9)]
    for path, text in zip(paths, texts):
        path.write_text(text, encoding="utf-8")
    readme = out_dir / "README.md"
    readme.write_text(_readme(ctx, paths), encoding="utf-8")
    return paths + [readme]
