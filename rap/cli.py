"""The ``rap`` command line: one subcommand per pipeline stage.

Every subcommand reads ``params.yaml`` through :func:`rap.config.load_params` first, so a bad
key or value stops the command before any work starts. ``--set key=value`` overrides a
top-level knob (``lambda``, ``frames``, ``racl``, ``mask_video``, ``mask_text``, ``seed``,
``scale``) or a dotted path inside the selected scale (``pretrain.optim.epochs=1``).
Heavy modules are imported inside the subcommands so ``rap --help`` stays instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from rap.config import ConfigError, Params, ProcessLayout, ablation_overrides, load_params
from rap.errors import RapError
from rap.registry import ALL_DATASETS, DOWNSTREAM_DATASETS, FINETUNE_TASKS, TEST_SPLIT

log = logging.getLogger("rap")


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["lambda=2.0", "pretrain.optim.epochs=1"]`` -> typed dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _relaunch_under_torchrun(layout: ProcessLayout, what: str) -> None:
    """Re-run this very command under torchrun when ``layout`` has more than one process.

    Lets ``dvc repro`` and Snakemake call plain ``rap pretrain`` whatever the layout;
    rap.launch builds the torchrun line (standalone on one node, a rendezvous from SLURM's
    environment on several). Inside torchrun (LOCAL_RANK set) nothing is relaunched.
    """
    if "LOCAL_RANK" in os.environ:
        return
    from rap import launch

    launch.check_layout(layout, what)
    try:
        cmd = launch.torchrun_argv(layout, sys.argv[1:], os.environ, python=sys.executable)
    except launch.LaunchError as err:
        raise ConfigError(f"{what}: {err}") from None
    if cmd is None:
        return
    log.info("launching %d of %d processes: %s", layout.procs_per_node, layout.world_size, " ".join(cmd))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, cmd, launch.torchrun_env(os.environ))


def _params(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Params:
    overrides = _parse_set(args.set)
    overrides.update(extra or {})
    return load_params(args.params, overrides)


# --------------------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------------------


def _check_weights(params: Params) -> None:
    """Every pretrained weight the model needs is on disk, before any other work (weights.py)."""
    from rap.model.weights import check_pretrained_weights

    check_pretrained_weights(params.cfg.model)


def cmd_download(args: argparse.Namespace) -> None:
    params = _params(args)
    from rap.data.download import download

    datasets = ALL_DATASETS if args.dataset == "synthetic" else (args.dataset,)
    if args.dataset == "synthetic" and params.cfg.data.source != "synthetic":
        raise ConfigError("`rap download synthetic` needs data.source: synthetic (the embedded scale)")
    incomplete = []
    for dataset in datasets:
        summary = download(dataset, params.cfg.data, limit=args.limit)
        print(summary.get("message", summary))
        if summary.get("missing") or summary.get("failed"):
            incomplete.append(dataset)
    if incomplete:
        # a non-zero exit stops `dvc repro` here rather than training on a partial dataset
        raise SystemExit(f"rap download: incomplete: {', '.join(incomplete)} (see the messages above)")


def cmd_extract(args: argparse.Namespace) -> None:
    params = _params(args)
    from rap.data.extract import extract

    summary = extract(args.dataset, params.cfg.data)
    print(summary)


def cmd_pretrain(args: argparse.Namespace) -> None:
    extra = ablation_overrides(args.ablation) if args.ablation else None
    params = _params(args, extra)
    _relaunch_under_torchrun(params.cfg.pretrain, "pretrain")  # checks the layout first
    _check_weights(params)
    from rap.training.pretrain import run

    run(params, Path(args.out), resume=args.resume, max_steps=args.max_steps)


def cmd_finetune(args: argparse.Namespace) -> None:
    params = _params(args)
    _relaunch_under_torchrun(params.cfg.finetune, "finetune")
    _check_weights(params)
    from rap.training.finetune import run

    run(params, args.task, Path(args.checkpoint), Path(args.out), resume=args.resume, max_steps=args.max_steps)


def cmd_evaluate(args: argparse.Namespace) -> None:
    params = _params(args)
    # fine-tuning's layout: every rank takes a share of the videos, texts and re-ranked pairs
    _relaunch_under_torchrun(params.cfg.finetune, "evaluate")
    _check_weights(params)
    from rap.evaluation import run_evaluation

    metrics = run_evaluation(params, args.dataset, args.split, Path(args.checkpoint), Path(args.out))
    t2v = metrics["t2v"]
    print(
        f"{args.dataset}/{args.split} t2v R@1 {t2v['R@1']:.1f} R@5 {t2v['R@5']:.1f} "
        f"R@10 {t2v['R@10']:.1f} MdR {t2v['MdR']:.1f}  -> {args.out}"
    )


def cmd_tables(args: argparse.Namespace) -> None:
    params = _params(args)
    if args.controlled:
        from rap.reports.controlled import write_controlled_table

        paths = write_controlled_table(Path(args.controlled), Path(args.runs), Path(args.out))
    elif args.seeds:
        from rap.reports.seed_tables import write_seed_tables

        paths = write_seed_tables(params, Path(args.runs), Path(args.out))
    else:
        from rap.reports.tables import write_tables

        paths = write_tables(params, Path(args.runs), Path(args.out))
    for path in paths:
        print(path)


def cmd_figure(args: argparse.Namespace) -> None:
    params = _params(args)
    from rap.reports.figure import draw_figure

    out = draw_figure(params, Path(args.racl_checkpoint), Path(args.baseline_checkpoint), Path(args.out))
    print(out)


# --------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------


def _add_resume(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--resume",
        default="auto",
        choices=("auto", "force", "no"),
        help="auto (default): continue the run in --out when its training settings and code are "
        "this command's; start a new one when that run had finished; otherwise stop and say "
        "what changed. force: continue whatever changed. no: start afresh. An earlier run's "
        "files are moved to <out>/set-aside/, never deleted (rap.training.resume)",
    )


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    common.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a top-level knob or a dotted key of the selected scale (repeatable)",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    parser = argparse.ArgumentParser(prog="rap", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("download", parents=[common], help="fetch a dataset (or generate the embedded corpus)")
    p.add_argument("dataset", choices=ALL_DATASETS + ("synthetic",))
    p.add_argument("--limit", type=int, default=None, help="take only the first N items (smoke runs)")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("extract", parents=[common], help="probe videos, index usable clips, build the frame store")
    p.add_argument("dataset", choices=ALL_DATASETS)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("pretrain", parents=[common], help="pre-train RaP (torchrun-aware)")
    p.add_argument("--out", default="runs/pretrain/main")
    p.add_argument(
        "--ablation", default=None, help="name of an ablation run (e.g. racl-none, frames-2, lambda-2.0, mask-0.75)"
    )
    _add_resume(p)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("finetune", parents=[common], help="fine-tune on a retrieval task (torchrun-aware)")
    p.add_argument("task", choices=FINETUNE_TASKS)
    p.add_argument("--checkpoint", required=True, help="pre-trained checkpoint")
    p.add_argument("--out", required=True)
    _add_resume(p)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("evaluate", parents=[common], help="text-video retrieval metrics of a checkpoint")
    p.add_argument("dataset", choices=DOWNSTREAM_DATASETS)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--split", default=TEST_SPLIT)
    p.add_argument("--out", required=True, help="metrics JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "tables",
        parents=[common],
        help="write reports/table1.md ... table9.md (--seeds: reports/seeds/, Tables 5 and 9 over seeds)",
    )
    p.add_argument("--runs", default="runs", help="root of the pipeline's run outputs")
    p.add_argument("--out", default="reports")
    p.add_argument(
        "--seeds",
        action="store_true",
        help="Tables 5 and 9 over the seeds of params.yaml seed_runs (mean, 95 %% t interval)",
    )
    p.add_argument(
        "--controlled",
        default=None,
        metavar="SPEC",
        help="the controlled experiment's table (SPEC: controlled/params.yaml) into --out/table.md",
    )
    p.set_defaults(func=cmd_tables)

    p = sub.add_parser("figure", parents=[common], help="draw Figure 3 (patch and token redundancy weights)")
    p.add_argument("--racl-checkpoint", default="runs/pretrain/main/checkpoint.pt")
    p.add_argument("--baseline-checkpoint", default="runs/ablation/racl-none/checkpoint.pt")
    p.add_argument("--out", default="reports/figure3.png")
    p.set_defaults(func=cmd_figure)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        args.func(args)
    except ConfigError as err:
        print(f"rap: configuration error: {err}", file=sys.stderr)
        return 2
    except RapError as err:  # about the user's data or runs: a message, not a traceback
        print(f"rap {args.command}: {type(err).__name__}: {err}", file=sys.stderr)
        signum = getattr(err, "signum", None)  # TrainingInterrupted: 128 + signal, as a killed process
        return 128 + signum if signum else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
