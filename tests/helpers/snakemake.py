"""Running the Snakemake workflow from tests: dry runs and their job lists, a tiny params file,
a real run (shared by test_snakemake, test_slurm, test_launch and test_pipeline_parity)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from rap.config import load_params
from rap.reports import layout

from helpers.config import shrunk_overrides

REPO = Path(__file__).resolve().parents[2]


def snakemake_dry_run(
    repo: Path,
    workdir: Path,
    *,
    params_file: Path | None = None,
    profile: Path | None = None,
    targets: list[str] | None = None,
    config: list[str] | None = None,
) -> str:
    """Output of a forced dry run of ``repo``'s workflow executed in ``workdir``.

    ``params_file`` (default ``repo/params.yaml``) is copied into ``workdir`` (the Snakefile's
    ``configfile``), so the dry run leaves ``repo`` untouched."""
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(params_file or repo / "params.yaml", workdir / "params.yaml")
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--dry-run",
        "--forceall",
        "--cores",
        "1",
        "-s",
        str(repo / "workflow" / "Snakefile"),
        "--directory",
        str(workdir),
    ]
    if profile is not None:
        cmd += ["--workflow-profile", str(profile)]
    if config:
        cmd += ["--config", *config]
    cmd += targets or []
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=240)
    if proc.returncode != 0:
        raise AssertionError(f"snakemake dry run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def parse_jobs(dry_run_output: str) -> set[str]:
    """Jobs of a dry run: ``"rule"`` for a rule without wildcards, ``"rule@value"`` for one
    wildcard, ``"rule@a=1,b=2"`` for several."""
    jobs: set[str] = set()
    rule: str | None = None
    for line in dry_run_output.splitlines() + ["Job stats:"]:
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m or line.startswith("Job stats:"):
            if rule is not None:  # the previous job had no wildcards
                jobs.add(rule)
            rule = m.group(1) if m else None
            continue
        m = re.match(r"^\s+wildcards: (.+)$", line)
        if m and rule is not None:
            pairs = [kv.split("=", 1) for kv in m.group(1).split(", ")]
            key = pairs[0][1] if len(pairs) == 1 else ",".join(f"{k}={v}" for k, v in pairs)
            jobs.add(f"{rule}@{key}")
            rule = None
    return jobs


def snakemake_jobs(repo: Path, workdir: Path | None = None, **kwargs) -> set[str]:
    """The set of jobs (``rule`` / ``rule@wildcard``) a full run of the workflow would execute,
    from a dry run in ``workdir`` (a temporary directory by default)."""
    if workdir is None:
        with tempfile.TemporaryDirectory() as tmp:
            return parse_jobs(snakemake_dry_run(repo, Path(tmp), **kwargs))
    return parse_jobs(snakemake_dry_run(repo, workdir, **kwargs))


def expected_jobs(params) -> set[str]:
    """The jobs params.yaml implies, derived independently of the Snakefile."""
    cfg = params.cfg
    zeroshot = set(cfg.evaluate.zero_shot)
    if layout.main_is_reference(params):  # reference rows of Tables 5-8 read the main zero-shot MSRVTT
        zeroshot.add("msrvtt")
    jobs = {"all", "pretrain", "tables", "figure", "speed"}
    jobs |= {f"download@{d}" for d in cfg.datasets} | {f"extract@{d}" for d in cfg.datasets}
    if cfg.data.extract_shards > 1:  # one job per shard, then the merge (extract@dataset)
        n = cfg.data.extract_shards
        jobs |= {f"extract_shard@dataset={d},shard={i}" for d in cfg.datasets for i in range(n)}
    jobs |= {f"evaluate_zeroshot@{d}" for d in zeroshot}
    jobs |= {f"{r}@{t}" for t in cfg.finetune.tasks for r in ("finetune", "evaluate_finetuned")}
    jobs |= {f"{r}@{n}" for n in params.ablations for r in ("pretrain_ablation", "evaluate_ablation")}
    return jobs


TINY_WORKFLOW = {
    "datasets": ["webvid", "cc3m", "msrvtt"],
    "evaluate.zero_shot": ["msrvtt"],
    "evaluate.itm_rerank_k": 4,
    "finetune.tasks": ["msrvtt-7k"],
    "finetune.epochs": {"msrvtt-7k": 1},
    "finetune.optim.batch_size": 16,
    "pretrain.optim.epochs": 1,
    "pretrain.optim.batch_size": 16,
    "data.synthetic_scale": 0.1,
}
TINY_OUTPUTS = [
    "data/index/webvid.jsonl",
    "data/index/cc3m.jsonl",
    "data/index/msrvtt.jsonl",
    "runs/pretrain/main/checkpoint.pt",
    "runs/ablation/racl-none/checkpoint.pt",
    "runs/finetune/msrvtt-7k/checkpoint.pt",
    "runs/eval/zeroshot/msrvtt.json",
    "runs/eval/finetuned/msrvtt-7k.json",
    "runs/eval/ablation/racl-none.json",
    "reports/figure3.png",
    "reports/timings/table8-speed.md",
] + [f"reports/table{i}.md" for i in range(1, 9)]


def write_params(path: Path, overrides: dict, top_level: dict | None = None) -> Path:
    """params.yaml with dotted ``overrides`` of its embedded block (and top-level keys) written
    to ``path``: the file a user shrinks the pipeline with (validated by rap.config)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw.update(top_level or {})
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = raw["embedded"]
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    load_params(path)
    return path


def tiny_params(workdir: Path, extra: dict | None = None, top_level: dict | None = None) -> Path:
    """The tiny workflow's params file in ``workdir`` (data under ``workdir/data``)."""
    overrides = {**shrunk_overrides(Path("data")), **TINY_WORKFLOW, **(extra or {})}
    return write_params(workdir / "params-tiny.yaml", overrides, {"ablations": ["racl-none"], **(top_level or {})})


def workflow_env() -> dict[str, str]:
    """This checkout's `rap` for the jobs; no MLflow store; one torch thread per process."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # `rap` of this venv
    return {**os.environ, "PATH": path, "PYTHONPATH": str(REPO), "RAP_TRACKING": "0", "OMP_NUM_THREADS": "1"}


def run_snakemake(
    workdir: Path, *args: str, timeout: int = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "workflow" / "Snakefile"),
        "--directory",
        str(workdir),
        *args,
    ]
    return subprocess.run(
        cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout, env={**workflow_env(), **(env or {})}
    )


def assert_tiny_outputs(workdir: Path) -> None:
    missing = [p for p in TINY_OUTPUTS if not (workdir / p).is_file()]
    assert not missing, f"the workflow did not write {missing}"
    summary = json.loads((workdir / "runs/pretrain/main/train_run.json").read_text())
    assert summary["finished"] and summary["steps"] == 2  # the tiny file's setting, not params.yaml's
    for name in ("zeroshot/msrvtt", "finetuned/msrvtt-7k", "ablation/racl-none"):
        metrics = json.loads((workdir / f"runs/eval/{name}.json").read_text())
        assert 0 <= metrics["t2v"]["R@1"] <= 100
    speed = (workdir / "reports/timings/table8-speed.md").read_text()
    assert "interleaved step by step in one process" in speed and "| 0.0 " in speed and "1.00x" in speed
    table1 = (workdir / "reports/table1.md").read_text()
    assert "RaP (this run, embedded" in table1 and "not run (task not in finetune.tasks)" in table1
