"""`rap tables --controlled controlled/params.yaml`: the controlled experiment's table (issue 20).

The experiment (``controlled/dvc.yaml``, declared in ``controlled/params.yaml``) re-generates
the embedded corpus with other generator knobs (:class:`rap.data.synthetic.SceneLook`: a larger
object, a uniform or a more textured background), pre-trains RaCL both and no RaCL on each look
over several seeds and evaluates each zero-shot on the look's own MSRVTT test split. The table
gives, per look and setting, the localisation AUCs (Table 9's, paper w and the [CLS] query) and
the feature diagnostics (:mod:`rap.feature_diagnostics`) as the mean with its 95 % t interval
over seeds (:func:`rap.reports.seed_tables.mean_interval`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from tabulate import tabulate

from rap.config import ConfigError, split_ablation_name
from rap.data.synthetic import SceneLook
from rap.reports.seed_tables import column_values, mean_interval
from rap.reports.tables import DIAGNOSTIC_COLUMNS, LOCALISATION_COLUMNS, MissingMetricsError

__all__ = ["ControlledSpec", "eval_path", "read_spec", "write_controlled_table"]

# the columns the experiment is about: Table 9's AUCs of RaCL's weights and of the [CLS] query,
# the diagnostics, R@1
_LOC_HEADS = ("patch AUC", "patch AUC, [CLS] query", "token AUC", "token AUC, [CLS] query")


@dataclass(frozen=True)
class ControlledSpec:
    synthetic_scale: float
    looks: dict[str, SceneLook]
    runs: tuple[str, ...]


def read_spec(path: str | Path) -> ControlledSpec:
    """Read and check ``controlled/params.yaml`` (errors name the file and the key)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    raw: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    unknown = set(raw) - {"synthetic_scale", "looks", "look_names", "runs"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}")
    scale = raw.get("synthetic_scale")
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or scale <= 0:
        raise ConfigError(f"{path}: synthetic_scale must be a number > 0, got {scale!r}")
    looks_raw = raw.get("looks")
    if not isinstance(looks_raw, dict) or not looks_raw:
        raise ConfigError(f"{path}: looks must map look names to {{object_scale, texture}}")
    looks = {}
    for name, knobs in looks_raw.items():
        try:
            looks[str(name)] = SceneLook(**knobs)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{path}: looks.{name}: {err}") from None
    if raw.get("look_names") != list(looks):
        raise ConfigError(f"{path}: look_names must list the keys of looks in order, {list(looks)}")
    runs = raw.get("runs")
    if not isinstance(runs, list) or not runs:
        raise ConfigError(f"{path}: runs must be a list of ablation run names")
    for run in runs:
        try:
            split_ablation_name(str(run))
        except ConfigError as err:
            raise ConfigError(f"{path}: runs: {err}") from None
    return ControlledSpec(float(scale), looks, tuple(str(r) for r in runs))


def eval_path(root: str | Path, look: str, run: str) -> Path:
    """``runs/eval/controlled/<look>/<run>.json`` (controlled/dvc.yaml writes it)."""
    return Path(root) / "eval" / "controlled" / look / f"{run}.json"


def _setting(run: str) -> tuple[str, int]:
    base, seed = split_ablation_name(run)
    return ("RaCL both" if not base else base), int(seed if seed is not None else 0)


def write_controlled_table(spec_path: str | Path, runs_root: str | Path, out_dir: str | Path) -> list[Path]:
    """Write ``<out_dir>/table.md``; a missing metrics file raises :class:`MissingMetricsError`."""
    spec = read_spec(spec_path)
    heads = {c[0]: i for i, c in enumerate(LOCALISATION_COLUMNS)}
    columns = [(h, f"loc:{heads[h]}") for h in _LOC_HEADS]
    columns += [(h, f"diag:{k}") for h, k in DIAGNOSTIC_COLUMNS] + [("R@1 ↑", "retrieval:R@1")]
    settings: dict[str, list[tuple[int, str]]] = {}
    for run in spec.runs:
        name, seed = _setting(run)
        settings.setdefault(name, []).append((seed, run))
    missing = [p for look in spec.looks for run in spec.runs if not (p := eval_path(runs_root, look, run)).is_file()]
    if missing:
        raise MissingMetricsError(
            f"{len(missing)} metrics file(s) of the controlled experiment are missing: "
            + ", ".join(p.as_posix() for p in missing)
        )
    body = []
    for look_name, look in spec.looks.items():
        for setting, seeded in settings.items():
            per_seed = [column_values(eval_path(runs_root, look_name, run), columns) for _, run in sorted(seeded)]
            cells = [
                mean_interval(
                    [row[c][0] for row in per_seed if row[c][0] is not None],
                    [row[c][1] for row in per_seed if row[c][1] is not None],
                )
                for c in range(len(columns))
            ]
            knobs = f"object x{look.object_scale:g}, texture x{look.texture:g}"
            body.append([look_name, knobs, setting, ", ".join(str(s) for s, _ in sorted(seeded)), *cells])
    text = "\n\n".join(
        [
            "# Controlled experiment: where RaCL's weights point as the scene changes (zero-shot MSRVTT)",
            "Declared in `controlled/params.yaml`, run by `dvc repro controlled/dvc.yaml`; not part of the "
            "default pipeline. Each look re-generates the embedded corpus (webvid, cc3m, msrvtt at synthetic "
            f"scale {spec.synthetic_scale:g}) with other generator knobs (`rap.data.synthetic.SceneLook`); each "
            "setting is pre-trained on it and evaluated on the look's own test split. Cells: the mean over "
            "seeds with its 95 % t interval [lo, hi]; 'q ±h': the mean half-width of the single runs' bootstrap "
            "intervals over queries. Columns as in [../table9.md](../table9.md).",
            tabulate(
                body,
                headers=["Look", "Knobs", "Pre-training", "Seeds", *[c[0] for c in columns]],
                tablefmt="github",
                disable_numparse=True,
                colalign=("left",) * 4 + ("right",) * len(columns),
            ),
        ]
    )
    out = Path(out_dir) / "table.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n", encoding="utf-8")
    return [out]
