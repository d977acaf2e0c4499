"""`rap tables`: the paper's Tables 1-7 with this run's rows beside the published ones, Tables 8 and 9.

Each ``reports/tableN.md`` follows the paper's layout: one block per setting (zero-shot,
fine-tuned), text-to-video R@1 / R@5 / R@10 (%) and median rank MdR. Under the paper's RaP row
comes this run's row, labelled with the scale and a run id (the DVC experiment name, else the
git revision); at the paper scale a third row gives the difference this run - paper. Tables
5-7 (ablations, zero-shot MSRVTT) interleave the paper's row and this run's row per setting.
Table 8 is beyond the paper: the MAC mask ratio r_v against pre-training speed (step time,
clips/s, FLOPs) and zero-shot MSRVTT R@1; Table 9 measures where RaCL's weights point on the
embedded corpus (:mod:`rap.localisation`). :mod:`rap.reports.seed_tables` repeats Tables 5 and
9 over seeds.

Tables 1-4 also show, per block, the authors' released checkpoint evaluated by rap with the
release's evaluation recipe and with rap's (release/dvc.yaml): read when those metrics exist,
otherwise the row says why not (not placed, not evaluated); they are never required.

Which file feeds which row is decided by :mod:`rap.reports.layout` (shared with dvc.yaml and
the Snakefile). Output is a pure function of the inputs (no timestamps, absolute paths or
dictionary-order effects), so the same metrics give the same bytes.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tabulate import tabulate

from rap.config import PRETRAIN_SOURCES, REFERENCE_KNOBS, Params
from rap.errors import RapError
from rap.reports import layout
from rap.reports.layout import TableRow, format_value
from rap.reports.paper_results import DATA_SYMBOLS, TABLE_TITLES, PaperRow, paper_blocks, paper_rap_row, paper_rows
from rap.reports.titles import TABLE8_TITLE, TABLE9_TITLE

METRIC_KEYS = ("R@1", "R@5", "R@10", "MdR")
DIRECTION = "t2v"  # the paper reports text-to-video retrieval only
# Where what cannot reproduce (Table 8's wall-clock figures, written by `rap speed`, rap/speed.py)
# lies beside the tables, in a file that says so; it is no DVC output and a rerun rewrites it.
TIMINGS_DIR = "timings"
_ABLATION_HEAD = {5: "RaCL", 6: "#frames K", 7: "lambda"}
_MISSING = "missing"
_NO_RUN = "n/a"


class MissingMetricsError(RapError, FileNotFoundError):
    """A metrics or training-summary file the tables need does not exist."""


class BadMetricsError(RapError, ValueError):
    """A metrics file exists but lacks a key or holds a non-numeric value."""


@dataclass(frozen=True)
class RunMetrics:
    """The four numbers the paper reports (text-to-video), or None with the text shown instead;
    ``intervals``: the 95 % bootstrap interval of R@1, R@5, R@10 when the metrics file has one."""

    values: tuple[float, float, float, float] | None
    absent: str = _MISSING  # "missing" (file not there) or "n/a" (no run provides the row)
    intervals: tuple[tuple[float, float], ...] | None = None


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


def read_intervals(path: Path, direction: str = DIRECTION) -> tuple[tuple[float, float], ...] | None:
    """The 95 % bootstrap intervals of R@1, R@5, R@10 written by `rap evaluate` (``ci95``), or
    None for a metrics file without them."""
    block = _read_json(path).get("ci95", {}).get(direction)
    if block is None:
        return None
    out = []
    for k in ("R@1", "R@5", "R@10"):
        lo, hi = block.get(f"{k}_lo"), block.get(f"{k}_hi")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (lo, hi)) or lo > hi:
            raise BadMetricsError(f"{path}: ci95.{direction}.{k} must be finite numbers lo <= hi, got {lo!r}, {hi!r}")
        out.append((float(lo), float(hi)))
    return tuple(out)


def read_localisation(path: Path) -> dict[str, Any] | None:
    """The ``localisation`` block `rap evaluate` writes where the data has a ground truth
    (:mod:`rap.localisation`), or None."""
    block = _read_json(path).get("localisation")
    if block is not None and not isinstance(block, dict):
        raise BadMetricsError(f"{path}: 'localisation' must be a mapping, got {block!r:.80}")
    return block


def read_flops(path: Path) -> float | None:
    """FLOPs per optimiser step of a pre-training run from its ``train_metrics.json``."""
    value = _read_json(path).get("flops_per_step")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise BadMetricsError(f"{path}: 'flops_per_step' must be a positive number, got {value!r}")
    return float(value)


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


WORKSPACE_RUN = "workspace"


def detect_run_id() -> str:
    """The DVC experiment name under `dvc exp run`, else ``workspace``. Not the git revision:
    committing the tables changes the revision, so a label holding it could never reproduce
    (the revision is on every MLflow run instead)."""
    return os.environ.get("DVC_EXP_NAME") or WORKSPACE_RUN


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
    """This run's R@1, R@5, R@10 (each with its 95 % interval when known) and MdR."""
    if m.values is None:
        return [m.absent] * 4
    if m.intervals is None:
        return [_fmt(v) for v in m.values]
    recalls = [f"{_fmt(v)} ({_fmt(lo)}–{_fmt(hi)})" for v, (lo, hi) in zip(m.values[:3], m.intervals)]
    return [*recalls, _fmt(m.values[3])]


def _diff_cells(m: RunMetrics, paper: PaperRow) -> list[str]:
    if m.values is None:
        return ["-"] * 4
    return [_fmt_diff(a, b) for a, b in zip(m.values, paper.values)]


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    return tabulate(
        rows,
        headers=headers,
        tablefmt="github",
        disable_numparse=True,
        colalign=("left",) * (len(headers) - 4) + ("right",) * 4,
    )


class _Context:
    """What every table needs: params, runs root, run label; collects the missing files."""

    def __init__(self, params: Params, metrics_root: Path, run_id: str) -> None:
        self.params = params
        self.root = metrics_root
        self.run_id = run_id
        self.rows = layout.table_rows(params, metrics_root)
        self.release_rows = layout.release_rows(params, metrics_root)
        self.at_paper_scale = params.scale == "paper"
        self.label = f"RaP (this run, {params.scale}, {run_id})"
        self.extra_files: dict[str, str] = {}  # relative path under the reports dir -> text
        self.missing: list[Path] = []

    def metrics(self, row: TableRow) -> RunMetrics:
        if row.metrics is None:
            return RunMetrics(None, _NO_RUN)
        if not row.metrics.is_file():
            self.missing.append(row.metrics)
            return RunMetrics(None)
        return RunMetrics(read_metrics(row.metrics), intervals=read_intervals(row.metrics))

    def flops(self, row: TableRow) -> float | None | str:
        """FLOPs per step, None when not recorded, or the text to show when there is no file."""
        if row.train_metrics is None:
            return _NO_RUN
        if not row.train_metrics.is_file():
            self.missing.append(row.train_metrics)
            return _MISSING
        return read_flops(row.train_metrics)

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
    sources: list[str] = []
    release_sources: list[str] = []
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
        body += _release_rows(ctx, [r for r in ctx.release_rows[table] if r.block == block], release_sources)
        parts.append(f"## {block}\n\n" + _md_table(["Method", "Data", "R@1 ↑", "R@5 ↑", "R@10 ↑", "MdR ↓"], body))
    symbols = sorted({r.data for r in paper_rows(table) if r.data}, key=list(DATA_SYMBOLS).index)
    notes = ["Pre-training data: " + "; ".join(f"{s} {DATA_SYMBOLS[s]}" for s in symbols) + "."]
    if sources:
        notes.append("This run's metrics (under the runs root): " + "; ".join(sources) + ".")
    notes.append(_RELEASE_NOTE)
    if release_sources:
        notes.append("The authors' checkpoints' metrics (under the runs root): " + "; ".join(release_sources) + ".")
    parts.append("\n".join(notes))
    return "\n\n".join(parts) + "\n"


# The authors' released checkpoints (rap.release; release/dvc.yaml): read when their evaluation
# has run, never required (the tables stage cannot depend on files a user may never place).
_RELEASE_NOTE = (
    "Authors' checkpoint rows: the files the release published (its README reports the paper's RaP "
    "numbers for them, from its own evaluation), evaluated by rap with `evaluate.recipe: release` (the "
    "release's evaluation) and `rap` (rap's). Place them under `<data.root>/release/` and run "
    "`dvc repro release/dvc.yaml`, then `dvc repro -f -s tables` (README, the authors' checkpoints)."
)
_NOT_PLACED = "not placed"
_NOT_EVALUATED = "not evaluated"  # placed, but release/dvc.yaml has not run


def _release_label(row: layout.ReleaseRow) -> str:
    what = "authors' checkpoint" if row.file is None else f"authors' checkpoint `{row.file.name}`"
    return f"{what}, evaluated by rap ({row.recipe} recipe)"


def _release_rows(ctx: _Context, rows: Sequence[layout.ReleaseRow], sources: list[str]) -> list[list[str]]:
    """The released file's rows of one block, one per recipe: its metrics when its evaluation has
    run, else why not (no file released for this task; not placed at its path; not evaluated)."""
    if rows and rows[0].file is None:
        return [["authors' checkpoint: none released for this task", "", "-", "-", "-", "-"]]
    body = []
    for row in rows:
        assert row.file is not None and row.metrics is not None
        if not row.metrics.is_file():
            why = f"{_NOT_EVALUATED}: `dvc repro release/dvc.yaml`" if row.file.is_file() else _NOT_PLACED
            body.append([f"{_release_label(row)}: {why} (`{row.file.as_posix()}`)", "♣", "-", "-", "-", "-"])
            continue
        m = RunMetrics(read_metrics(row.metrics), intervals=read_intervals(row.metrics))
        body.append([f"**{_release_label(row)}**", "♣", *_cells(m)])
        paper = paper_rap_row(row.table, row.block)
        if ctx.at_paper_scale and paper is not None:
            body.append([f"Δ (authors' checkpoint, {row.recipe} recipe − paper RaP)", "", *_diff_cells(m, paper)])
        sources.append(f"{row.block}, {row.recipe} recipe: `{ctx.rel(row.metrics)}`")
    return body


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
    return [
        f"n/a: the main run ({knobs}) is not at the paper's main setting ({ref}), so no run provides the reference row."
    ]


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
    parts = [
        _header(table, TABLE_TITLES[table], ctx),
        "## Zero-shot\n\n" + _md_table([_ABLATION_HEAD[table], "Source", "R@1 ↑", "R@5 ↑", "R@10 ↑", "MdR ↓"], body),
    ]
    sources = [f"`{ctx.rel(r.metrics)}`" for r in rows if r.metrics is not None]
    notes = ["This run's metrics (under the runs root): " + "; ".join(sources) + "."] if sources else []
    parts.append("\n".join(notes + _reference_note(ctx, rows)))
    return "\n\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------
# Table 8: MAC mask ratio vs speed
# --------------------------------------------------------------------------------------


def _table8(ctx: _Context) -> str:
    """Reproducible columns (FLOPs, R@1, MdR) in table8.md; the wall-clock columns in
    ``timings/table8-speed.md`` (written by ``rap speed``: the mask ratios timed interleaved in one process)."""
    rows = ctx.rows[8]
    flops = {r.key: ctx.flops(r) for r in rows}
    base_flops = next(
        (flops[r.key] for r in rows if r.setting is not None and r.setting.is_main and isinstance(flops[r.key], float)),
        None,
    )
    body = []
    for r in rows:
        assert r.setting is not None
        m = ctx.metrics(r)
        f = flops[r.key]
        if isinstance(f, str) or f is None:
            flop_cells = [f or "-", "-"]
        else:
            flop_cells = [f"{f / 1e9:.1f}", "-" if base_flops is None else f"{f / base_flops:.2f}x"]
        cells = _cells(m)
        r1, mdr = cells[0], cells[3]
        body.append([format_value(r.setting.value), _origin(r), *flop_cells, r1, mdr])
    ref = format_value(REFERENCE_KNOBS["mask_video"])
    headers = ["r_v", "Run", "GFLOPs/step", f"FLOPs vs r_v={ref}", "R@1 ↑", "MdR ↓"]
    speed_file = f"{TIMINGS_DIR}/table8-speed.md"
    text = [
        _header(8, TABLE8_TITLE, ctx),
        "Not in the RaP paper. MAC masks a random subset of video patches in every frame during "
        "pre-training (evaluation is unmasked); the MAC paper reports 60% fewer FLOPs and 3x faster "
        "pre-training. FLOPs per optimiser step of this run's pre-trainings (forward + backward, one "
        "rank) are counted by torch's FlopCounterMode and reproduce; zero-shot MSRVTT text-to-video. "
        "Wall-clock speed "
        f"depends on the machine: it is in [{speed_file}]({speed_file}), measured by `rap speed` (the mask "
        "ratios' training steps interleaved in one process) and rewritten by every run.",
        tabulate(
            body, headers=headers, tablefmt="github", disable_numparse=True, colalign=("left", "left") + ("right",) * 4
        ),
    ]
    sources = [
        f"`{ctx.rel(r.metrics)}`, `{ctx.rel(r.train_metrics)}`"
        for r in rows
        if r.metrics is not None and r.train_metrics is not None
    ]
    notes = ["This run's files (under the runs root): " + "; ".join(sources) + "."] if sources else []
    text.append("\n".join(notes + _reference_note(ctx, rows)))
    return "\n\n".join(text) + "\n"


# --------------------------------------------------------------------------------------
# Table 9: where the redundancy weights point
# --------------------------------------------------------------------------------------

# (column head, block, weighting or "pair_auc", statistic) of the localisation cells
LOCALISATION_COLUMNS = (
    ("patch AUC", "patch", "paper", "auc"),
    ("patch AUC, release w", "patch", "official", "auc"),
    ("patch AUC per pair", "patch", "pair_auc", None),
    ("patch AP", "patch", "paper", "ap"),
    ("token AUC", "token", "paper", "auc"),
    ("token AUC, release w", "token", "official", "auc"),
    ("token AP", "token", "paper", "ap"),
    # the paper's Figure 3 draws these: s(T_cls, P_n) over patches, s(P_cls, T_l) over tokens
    ("patch AUC, [CLS] query", "patch", "cls_query", "auc"),
    ("token AUC, [CLS] query", "token", "cls_query", "auc"),
)
# (column head, key of the ``diagnostics`` block rap.feature_diagnostics writes)
DIAGNOSTIC_COLUMNS = (
    ("token collapse", "token_collapse"),
    ("patch collapse", "patch_collapse"),
    ("patch spread", "patch_spread"),
    ("background · u", "background_token_alignment"),
    ("object · u", "object_token_alignment"),
)


def localisation_value(block: dict[str, Any] | None, part: str, weighting: str, stat: str | None) -> float | None:
    """One number of a ``localisation`` block (None where the split had no such score)."""
    entry = (block or {}).get(part, {}).get(weighting)
    value = entry if stat is None else (entry or {}).get(stat)
    return None if value is None else float(value)


def localisation_interval(block: dict[str, Any] | None, part: str, weighting: str) -> tuple[float, float] | None:
    """The 95 % bootstrap interval over queries of a pooled AUC (``auc_lo``, ``auc_hi``), or None."""
    entry = (block or {}).get(part, {}).get(weighting)
    if not isinstance(entry, dict) or entry.get("auc_lo") is None or entry.get("auc_hi") is None:
        return None
    return float(entry["auc_lo"]), float(entry["auc_hi"])


def read_diagnostics(path: Path) -> dict[str, Any] | None:
    """The ``diagnostics`` block `rap evaluate` writes (:mod:`rap.feature_diagnostics`), or None."""
    block = _read_json(path).get("diagnostics")
    if block is not None and not isinstance(block, dict):
        raise BadMetricsError(f"{path}: 'diagnostics' must be a mapping, got {block!r:.80}")
    return block


def diagnostic_value(block: dict[str, Any] | None, key: str) -> float | None:
    value = (block or {}).get(key)
    return None if value is None else float(value)


def setting_label(row: TableRow) -> str:
    """The pre-training of a Table 5 / 9 row in knob terms: ``racl=both, variant=paper, w grad=on``."""
    assert row.setting is not None
    knobs = dict(REFERENCE_KNOBS)
    knobs[row.setting.knob] = row.setting.value
    grad = "on" if knobs["racl_weight_grad"] else "off"
    return f"RaCL {knobs['racl']}, {knobs['racl_variant']} w, w grad {grad}"


def chance_ap(block: dict[str, Any] | None, part: str) -> float | None:
    entry = (block or {}).get(part, {}).get("paper")
    return None if not entry else entry["positives"] / (entry["positives"] + entry["negatives"])


def _table9(ctx: _Context) -> str:
    rows = ctx.rows[layout.LOCALISATION_TABLE]
    body, chance = [], {}
    for r in rows:
        m = ctx.metrics(r)
        loc = read_localisation(r.metrics) if r.metrics is not None and r.metrics.is_file() else None
        if loc is None:
            cells = [m.absent if m.values is None else "no ground truth"] * len(LOCALISATION_COLUMNS)
        else:
            cells = [_fmt2(localisation_value(loc, *col[1:])) for col in LOCALISATION_COLUMNS]
            chance = {part: chance_ap(loc, part) for part in ("patch", "token")}
        body.append([setting_label(r), _origin(r), *cells, _cells(m)[0]])
    headers = ["Pre-training", "Run", *[c[0] for c in LOCALISATION_COLUMNS], "R@1 ↑"]
    chance_text = ", ".join(f"{part} {_fmt2(v)}" for part, v in chance.items() if v is not None)
    text = [
        _header(layout.LOCALISATION_TABLE, TABLE9_TITLE, ctx),
        "Not in the RaP paper, whose Figure 3 shows the claim qualitatively: RaCL's weight w = 1 - redundancy "
        "(eqs. 4-8) should be high on what the other modality names. Measured on the embedded corpus, whose "
        "generator records what each caption names (`rap/localisation.py`): for every test query and its video, "
        "ROC-AUC / average precision of the patch weights at separating the patches a captioned object covers "
        "(in at least half of the evaluated frames) from those nothing captioned touches, and of the token "
        "weights at separating shown words (colour, shape, motion, the second object) from redundant phrases. "
        "AUC 0.5 = chance, 1 = every positive above every negative, below 0.5 = the weights point at the "
        "redundancy instead. Pooled over all pairs with the paper's w and with the release's softmax((1 - r)/tau); "
        "'per pair': the mean AUC within each pair (the same for both weightings). '[CLS] query': what the "
        "paper's Figure 3 draws (caption, section 5.6), the similarity of the caption's [CLS] feature with each "
        "patch, s(T_cls, P_n), and of the video's [CLS] feature with each token, s(P_cls, T_l), scored the same "
        f"way. AP at chance = the share of positives ({chance_text or '-'}). R@1: zero-shot MSRVTT "
        "text-to-video with its 95 % interval. Scored in eval mode, coverage in the painter's pixel convention "
        "(`rap.data.ground_truth`).",
        tabulate(
            body,
            headers=headers,
            tablefmt="github",
            disable_numparse=True,
            colalign=("left", "left") + ("right",) * (len(headers) - 2),
        ),
    ]
    text += _diagnostics_table(rows)
    sources = [f"`{ctx.rel(r.metrics)}`" for r in rows if r.metrics is not None]
    notes = ["This run's metrics (under the runs root): " + "; ".join(sources) + "."] if sources else []
    text.append("\n".join(notes + _reference_note(ctx, rows)))
    return "\n\n".join(text) + "\n"


def _diagnostics_table(rows: Sequence[TableRow]) -> list[str]:
    """The features behind Table 9 (:mod:`rap.feature_diagnostics`), one row per setting."""
    body = []
    for r in rows:
        diag = read_diagnostics(r.metrics) if r.metrics is not None and r.metrics.is_file() else None
        body.append([setting_label(r), *[_fmt2(diagnostic_value(diag, key)) for _, key in DIAGNOSTIC_COLUMNS]])
    return [
        "The features behind it (`rap/feature_diagnostics.py`), means over the same test pairs: token collapse = "
        "mean pairwise cosine of a caption's token features ([SEP] included); patch collapse = the same over a "
        "video's patches; patch spread = 1 - |mean unit patch vector|; background / object · u = mean cosine of "
        "background patches (coverage 0) / object patches (coverage >= 0.5) with the caption's mean token "
        "direction u.",
        tabulate(
            body,
            headers=["Pre-training", *[c[0] for c in DIAGNOSTIC_COLUMNS]],
            tablefmt="github",
            disable_numparse=True,
            colalign=("left",) + ("right",) * len(DIAGNOSTIC_COLUMNS),
        ),
    ]


def _fmt2(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


# --------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------


def _header(table: int, title: str, ctx: _Context) -> str:
    lines = [f"# Table {table}: {title}", ""]
    lines.append(
        f"Text-to-video retrieval; R@K in %, MdR = median rank; this run's R@K with its 95 % bootstrap "
        f"interval over queries in parentheses. This run: scale `{ctx.params.scale}`, "
        f"run `{ctx.run_id}`."
    )
    if table <= 7:
        lines.append(f"Paper rows: RaP paper, Table {table}, as printed ('-' = not reported).")
        lines.append(
            "Δ rows: this run − the paper's row."
            if ctx.at_paper_scale
            else f"No differences to the paper: at the `{ctx.params.scale}` scale the numbers are not "
            "comparable (they are shown at the `paper` scale only)."
        )
    return "\n".join(lines)


def _readme(ctx: _Context, files: list[Path]) -> str:
    lines = [
        "# Reports",
        "",
        f"Generated by `rap tables` from the pipeline's metrics files; scale `{ctx.params.scale}`, run `{ctx.run_id}`.",
        "",
    ]
    titles = {**TABLE_TITLES, 8: TABLE8_TITLE, layout.LOCALISATION_TABLE: TABLE9_TITLE}
    for i, path in enumerate(files, start=1):
        lines.append(f"- [Table {i}]({path.name}): {titles[i]}")
    lines.append("- [Figure 3](figure3.png): redundancy weights of patches and tokens, RaCL vs w/o RaCL (`rap figure`)")
    return "\n".join(lines) + "\n"


def write_tables(
    params: Params, metrics_root: Path, out_dir: Path, *, run_id: str | None = None, allow_missing: bool = False
) -> list[Path]:
    """Write ``table1.md`` ... ``table9.md`` and ``README.md`` into ``out_dir``.

    ``metrics_root`` is the runs root of :mod:`rap.reports.layout`. A missing metrics or summary
    file raises :class:`MissingMetricsError` naming every missing file, unless
    ``allow_missing`` (then its cells read ``missing``). Nothing is written on error.
    """
    ctx = _Context(params, Path(metrics_root), run_id or detect_run_id())
    texts = [_result_table(ctx, t) for t in (1, 2, 3, 4)]
    texts += [_ablation_table(ctx, t) for t in (5, 6, 7)]
    texts.append(_table8(ctx))
    texts.append(_table9(ctx))
    if ctx.missing and not allow_missing:
        missing = sorted({p.as_posix() for p in ctx.missing})
        raise MissingMetricsError(f"{len(missing)} file(s) needed by the tables are missing: " + ", ".join(missing))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"table{i}.md" for i in layout.REPORT_TABLES]
    for path, text in zip(paths, texts):
        path.write_text(text, encoding="utf-8")
    readme = out_dir / "README.md"
    readme.write_text(_readme(ctx, paths), encoding="utf-8")
    extra = []
    for rel, text in ctx.extra_files.items():
        extra.append(out_dir / rel)
        extra[-1].parent.mkdir(parents=True, exist_ok=True)
        extra[-1].write_text(text, encoding="utf-8")
    return paths + [readme] + extra
