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

from rap import cpu_kernels
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
    cpus = launch.available_cpus()
    if cpus < layout.procs_per_node:
        log.warning(
            "%s: %d processes on this node share %d CPU(s): the job (or its srun step) got fewer CPUs "
            "than processes (srun --cpus-per-task; workflow/profiles/slurm sets it)",
            what,
            layout.procs_per_node,
            cpus,
        )
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, cmd, launch.torchrun_env(os.environ))


def _params(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Params:
    """The validated params; the CPU kernels are pinned as they say before anything loads torch."""
    overrides = _parse_set(args.set)
    overrides.update(extra or {})
    params = load_params(args.params, overrides)
    _check_dvc_data_root(params.cfg.data.root)
    cpu_kernels.pin(params.cfg.cpu.kernels, params.cfg.cpu.threads)
    return params


def _check_dvc_data_root(root: str) -> None:
    """Under DVC (a stage sets DVC_STAGE and runs in the workspace's root: the repository, or an
    experiment's temporary copy), data.root must be that workspace's ``data/`` or below it:
    dvc.yaml's paths are fixed there (DVC cannot pick them per scale), so a root elsewhere would
    write what DVC never sees. Data on another filesystem: make ``data`` a symlink to it."""
    if not os.environ.get("DVC_STAGE"):
        return
    data, resolved = (Path.cwd() / "data").resolve(), Path(root).resolve()
    if resolved != data and not resolved.is_relative_to(data):
        raise ConfigError(
            f"data.root={root!r} is outside {Path.cwd() / 'data'}, where dvc.yaml's stages read and write; "
            f'keep data.root=data and link the data there instead (ln -s {resolved} data; README "Data on '
            'another filesystem")'
        )


# --------------------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------------------


def _check_weights(params: Params) -> None:
    """Every pretrained weight the model needs is on disk, before any other work (weights.py)."""
    from rap.model.weights import check_pretrained_weights

    check_pretrained_weights(params.cfg.model)


def _check_tracking(nodes: int) -> None:
    """Say before any work when MLflow does not answer or a multi-node run logs to SQLite."""
    from rap import tracking

    tracking.check_store(nodes)


def cmd_tracking_sync(args: argparse.Namespace) -> None:
    """Replay what a run spooled while MLflow was unreachable (rap.tracking_spool)."""
    from rap import tracking
    from rap.tracking_spool import ReplayStopped, spool_files

    if not spool_files(args.run_dir):
        print(f"{args.run_dir}: no MLflow spool (nothing to replay)")
        return
    try:
        for done in tracking.sync(args.run_dir, args.uri):
            print(f"{done['spool']}: {done['records']} record(s) logged to {done['uri']}")
    except ReplayStopped as err:
        raise SystemExit(f"rap tracking sync: MLflow still unreachable, nothing lost: {err}") from None


def cmd_download(args: argparse.Namespace) -> None:
    params = _params(args)
    from rap.data.download import download

    datasets = ALL_DATASETS if args.dataset == "synthetic" else (args.dataset,)
    if args.dataset == "synthetic" and params.cfg.data.source != "synthetic":
        raise ConfigError("`rap download synthetic` needs data.source: synthetic (the embedded scale)")
    for dataset in datasets:
        # never fails for one item; stops (BelowThreshold, exit 1) below data.<dataset>.min_success
        summary = download(dataset, params.cfg.data, limit=args.limit, retry_failed=args.retry_failed)
        print(summary["message"])
        for warning in summary["size_warnings"]:
            print(f"warning: published-size check: {warning}")


def cmd_import(args: argparse.Namespace) -> None:
    params = _params(args)
    from rap.data.importer import import_copy

    print(import_copy(args.dataset, Path(args.path), params.cfg.data)["message"])


def _shard_arg(value: str) -> tuple[int, int]:
    """``--shard I/N`` -> (I, N), with 0 <= I < N."""
    i, sep, n = value.partition("/")
    try:
        shard, shards = int(i), int(n)
    except ValueError:
        shard = shards = -1
    if not sep or not (shards >= 1 and 0 <= shard < shards):
        raise argparse.ArgumentTypeError(f"{value!r}: expected I/N with N >= 1 and 0 <= I < N (e.g. 0/4)")
    return shard, shards


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: expected an integer >= 1")
    return n


def cmd_extract(args: argparse.Namespace) -> None:
    params = _params(args)
    from rap.data import extract

    cfg = params.cfg.data
    if args.merge is not None:
        summary = extract.merge(args.dataset, cfg, args.merge)
    elif args.shard is not None and args.shard[1] > 1:
        summary = extract.extract_shard(args.dataset, cfg, *args.shard, stop_after=args.stop_after)
    else:  # unsharded, or --shard 0/1: the one shard and its merge
        summary = extract.extract(args.dataset, cfg, stop_after=args.stop_after)
    print(summary)
    if not summary.get("complete", True):
        print(f"stopped after --stop-after {args.stop_after} items; run the same command again to go on")


def _check_not_locked(out: str, *, is_file: bool = False, force: bool, how_to_force: str) -> None:
    """Stop at once when another process writes to ``out`` (the run itself takes the lock on
    rank 0, after any torchrun relaunch: rap.run_lock). Not inside torchrun, where rank 0 may
    already hold it for this very run (the launcher looked before relaunching)."""
    if "LOCAL_RANK" in os.environ:
        return
    from rap import run_lock

    run_lock.check_free(run_lock.lock_path(Path(out), is_file=is_file), force=force, how_to_force=how_to_force)


def cmd_pretrain(args: argparse.Namespace) -> None:
    extra = ablation_overrides(args.ablation) if args.ablation else None
    params = _params(args, extra)
    _check_not_locked(args.out, force=args.resume == "force", how_to_force="pass --resume force")
    _relaunch_under_torchrun(params.cfg.pretrain, "pretrain")  # checks the layout first
    _check_tracking(params.cfg.pretrain.nodes)
    _check_weights(params)
    from rap.training.pretrain import run

    run(params, Path(args.out), resume=args.resume, max_steps=args.max_steps)


def cmd_finetune(args: argparse.Namespace) -> None:
    params = _params(args)
    _check_not_locked(args.out, force=args.resume == "force", how_to_force="pass --resume force")
    _relaunch_under_torchrun(params.cfg.finetune, "finetune")
    _check_tracking(params.cfg.finetune.nodes)
    _check_weights(params)
    from rap.training.finetune import run

    run(params, args.task, Path(args.checkpoint), Path(args.out), resume=args.resume, max_steps=args.max_steps)


def cmd_evaluate(args: argparse.Namespace) -> None:
    params = _params(args)
    _check_not_locked(args.out, is_file=True, force=args.take_over_lock, how_to_force="pass --take-over-lock")
    # fine-tuning's layout: every rank takes a share of the videos, texts and re-ranked pairs
    _relaunch_under_torchrun(params.cfg.finetune, "evaluate")
    _check_tracking(params.cfg.finetune.nodes)
    _check_weights(params)
    from rap.evaluation import run_evaluation

    metrics = run_evaluation(
        params, args.dataset, args.split, Path(args.checkpoint), Path(args.out), take_over_lock=args.take_over_lock
    )
    t2v = metrics["t2v"]
    print(
        f"{args.dataset}/{args.split} t2v R@1 {t2v['R@1']:.1f} R@5 {t2v['R@5']:.1f} "
        f"R@10 {t2v['R@10']:.1f} MdR {t2v['MdR']:.1f}  -> {args.out}"
    )


def cmd_import_release(args: argparse.Namespace) -> None:
    # the released checkpoints are paper-scale models: their params record that scale unless
    # --set scale=... says otherwise
    params = _params(args, None if any(s.startswith("scale=") for s in args.set) else {"scale": "paper"})
    from rap.release.importer import import_release

    print(import_release(Path(args.file), Path(args.out), params.to_flat_dict()))


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


def cmd_compare(args: argparse.Namespace) -> None:
    from rap.compare import compare, mlflow_runs_url

    dvc_args = args.dvc_args[1:] if args.dvc_args[:1] == ["--"] else args.dvc_args
    print(compare(Path.cwd(), dvc_args, fmt=args.format))
    if args.mlflow_ui:
        print(f"\nMLflow runs: {mlflow_runs_url(args.mlflow_ui)}")


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
        "what changed. force: continue whatever changed, and take over <out>/rap.lock from a "
        "holder on another host that rap cannot check. no: start afresh. An earlier run's "
        "files are moved to <out>/set-aside/, never deleted (rap.training.resume, rap.run_lock)",
    )


def cmd_speed(args: argparse.Namespace) -> None:
    params = _params(args)
    from rap.speed import run_speed

    run_speed(params, Path(args.out), Path(args.json), reps=args.reps)


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
    p.add_argument("--retry-failed", action="store_true", help="fetch again the URLs an earlier run recorded as failed")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser(
        "import",
        parents=[common],
        help="write the manifest of a copy you already hold (WebVid's release layout, webdataset shards, "
        "or a raw/<dataset> folder placed by hand), without copying it",
    )
    p.add_argument("dataset", choices=ALL_DATASETS)
    p.add_argument("path", help="folder of the copy (see rap/data/importer.py for the layouts)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("extract", parents=[common], help="probe videos, index usable clips, build the frame store")
    p.add_argument("dataset", choices=ALL_DATASETS)
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--shard",
        type=_shard_arg,
        metavar="I/N",
        help="do only the items at manifest positions p with p %% N == I and write their shard file "
        "(index/DATASET.shards/I-of-N.jsonl); then --merge N makes the index",
    )
    how.add_argument("--merge", type=_positive_int, metavar="N", help="make the index of the N finished shards")
    p.add_argument(
        "--stop-after",
        type=_positive_int,
        metavar="K",
        help="do at most K new items, then stop (a time-boxed job); the next run resumes where it stopped",
    )
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
    p.add_argument(
        "--take-over-lock",
        action="store_true",
        help="take over <out>.lock from a holder on another host that rap cannot check (after checking it is gone)",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "import-release",
        parents=[common],
        help="convert a checkpoint of the authors' release (rap_pretrain.pth, a fine-tuned file) "
        "into DIR/checkpoint.pt (read weights-only; DIR/import.json says what became of each key)",
    )
    p.add_argument("file", help="the release's .pth file")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=cmd_import_release)

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

    p = sub.add_parser(
        "speed", parents=[common], help="time the MAC mask ratios' training steps interleaved (Table 8's speed)"
    )
    p.add_argument("--out", default="reports/timings/table8-speed.md")
    p.add_argument("--json", default="runs/speed/table8.json", help="the measurements, for other tools")
    p.add_argument("--reps", type=int, default=10, help="timed steps per mask ratio")
    p.set_defaults(func=cmd_speed)

    p = sub.add_parser("figure", parents=[common], help="draw Figure 3 (patch and token redundancy weights)")
    p.add_argument("--racl-checkpoint", default="runs/pretrain/main/checkpoint.pt")
    p.add_argument("--baseline-checkpoint", default="runs/ablation/racl-none/checkpoint.pt")
    p.add_argument("--out", default="reports/figure3.png")
    p.set_defaults(func=cmd_figure)

    p = sub.add_parser("tracking", help="MLflow tracking: replay what a run spooled while the server was away")
    tsub = p.add_subparsers(dest="tracking_command", required=True)
    q = tsub.add_parser("sync", help="log a run directory's spooled records (mlflow-spool.jsonl) to MLflow")
    q.add_argument("run_dir", help="a run directory (its spool and its evaluations') or one spool file")
    q.add_argument("--uri", default=None, help="tracking URI (default: the one the records were meant for)")
    q.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    q.set_defaults(func=cmd_tracking_sync)

    p = sub.add_parser(
        "compare",
        help="one row per DVC experiment: the params that differ, t2v R@1 with intervals, patch/token AUC",
        description="Reads `dvc exp show --json` (arguments after -- go to it, e.g. -- -A or -- -n 3).",
    )
    p.add_argument("--format", choices=("github", "csv", "json"), default="github", help="table format")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--mlflow-ui", metavar="URL", help="also print the MLflow runs table's address under this UI")
    p.add_argument("dvc_args", nargs=argparse.REMAINDER, help="passed on to dvc exp show")
    p.set_defaults(func=cmd_compare)
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
