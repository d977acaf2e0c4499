"""The Snakemake workflow: a dry run succeeds and schedules exactly the jobs params.yaml implies.

:func:`snakemake_jobs` returns the dry run's jobs as ``rule`` or ``rule@wildcard`` strings
(the shape of dvc.yaml's ``stage@key`` names), so that the workflow can be compared with
dvc.yaml's stages.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from rap.config import load_params
from rap.reports import layout

REPO = Path(__file__).resolve().parents[1]


def snakemake_dry_run(repo: Path, workdir: Path, *, params_file: Path | None = None,
                      profile: Path | None = None) -> str:
    """Output of a forced dry run of ``repo``'s workflow executed in ``workdir``.

    ``params_file`` (default ``repo/params.yaml``) is copied into ``workdir`` (the Snakefile's
    ``configfile``), so the dry run leaves ``repo`` untouched."""
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(params_file or repo / "params.yaml", workdir / "params.yaml")
    cmd = [sys.executable, "-m", "snakemake", "--dry-run", "--forceall", "--cores", "1",
           "-s", str(repo / "workflow" / "Snakefile"), "--directory", str(workdir)]
    if profile is not None:
        cmd += ["--workflow-profile", str(profile)]
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
    jobs = {"all", "pretrain", "tables", "figure"}
    jobs |= {f"download@{d}" for d in cfg.datasets} | {f"extract@{d}" for d in cfg.datasets}
    jobs |= {f"evaluate_zeroshot@{d}" for d in zeroshot}
    jobs |= {f"{r}@{t}" for t in cfg.finetune.tasks for r in ("finetune", "evaluate_finetuned")}
    jobs |= {f"{r}@{n}" for n in params.ablations for r in ("pretrain_ablation", "evaluate_ablation")}
    return jobs


def test_dry_run_jobs_match_params(tmp_path):
    params = load_params(REPO / "params.yaml")
    out = snakemake_dry_run(REPO, tmp_path / "work")
    jobs = parse_jobs(out)
    assert jobs == expected_jobs(params) == snakemake_jobs(REPO)
    assert "pretrain_ablation@racl-none" in jobs and "evaluate_ablation@lambda-2.0" in jobs
    # the embedded scale trains in one process: plain `rap`, no srun step; every command is
    # given the params file the DAG was built from
    assert "rap pretrain --out runs/pretrain/main --params params.yaml" in out and "srun" not in out
    assert "rap pretrain --ablation mask-0.75 --out runs/ablation/mask-0.75" in out
    assert "rap evaluate msrvtt --checkpoint runs/finetune/msrvtt-9k/checkpoint.pt " \
           "--out runs/eval/finetuned/msrvtt-9k.json" in out
    assert not any(tmp_path.joinpath("work", d).exists() for d in ("runs", "data", "reports"))  # dry


def test_dry_run_paper_scale_slurm_profile(tmp_path):
    """Paper scale under the SLURM profile: GPU resources and torchrun launches; a shorter
    ablation list and a main run off the reference setting change the job set accordingly."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw.update({"scale": "paper", "ablations": ["racl-none", "frames-2"], "lambda": 2.0})
    params_file = tmp_path / "params-paper.yaml"
    params_file.write_text(yaml.safe_dump(raw), encoding="utf-8")
    params = load_params(params_file)
    out = snakemake_dry_run(REPO, tmp_path / "work", params_file=params_file,
                            profile=REPO / "workflow" / "profiles" / "slurm")
    jobs = parse_jobs(out)
    assert jobs == expected_jobs(params)
    assert "pretrain_ablation@lambda-0.5" not in jobs
    pre = params.cfg.pretrain
    assert (pre.nodes, pre.gpus_per_node) == (8, 8)  # the paper's 64 GPUs
    # several nodes: the job's own srun step starts one `rap pretrain` (one torchrun) per node
    assert f"srun --nodes={pre.nodes} --ntasks-per-node=1 --kill-on-bad-exit=1 rap pretrain " \
           "--out runs/pretrain/main --params params.yaml" in out
    assert re.search(rf"rule pretrain:\n(?:.*\n)*?\s+resources: .*slurm_partition=gpu.*nodes={pre.nodes}.*"
                     rf"tasks={pre.nodes}.*mpi=srun.*gres=gpu:{pre.gpus_per_node}", out)
    # fine-tuning on one node of 8 GPUs: one task, rap starts torchrun itself
    assert "rap finetune msrvtt-7k --checkpoint runs/pretrain/main/checkpoint.pt" in out
    assert re.search(r"rule finetune:\n(?:.*\n)*?\s+resources: .*slurm_partition=gpu.*gpu=8", out)


@pytest.mark.parametrize("bad", [{"lambda": -1.0}, {"ablations": ["lambda-x"]}])
def test_dry_run_rejects_bad_params(tmp_path, bad):
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw.update(bad)
    params_file = tmp_path / "bad.yaml"
    params_file.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(AssertionError, match="lambda"):
        snakemake_dry_run(REPO, tmp_path / "work", params_file=params_file)
