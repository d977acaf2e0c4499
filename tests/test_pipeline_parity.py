"""dvc.yaml (the pipeline of record) and the Snakemake workflow cannot drift apart: the same
jobs, running the same `rap` commands."""

from __future__ import annotations

from pathlib import Path

from dvc.repo import Repo

from helpers.snakemake import parse_jobs, snakemake_dry_run

REPO = Path(__file__).resolve().parents[1]

# dvc.yaml stage name -> Snakemake rule name (Snakemake rule names cannot contain '-')
STAGE_TO_RULE = {
    "download": "download",
    "extract": "extract",
    "pretrain": "pretrain",
    "zeroshot": "evaluate_zeroshot",
    "finetune": "finetune",
    "finetuned": "evaluate_finetuned",
    "ablation": "pretrain_ablation",
    "ablation-zeroshot": "evaluate_ablation",
    "tables": "tables",
    "figure": "figure",
}


def dvc_stages() -> dict[str, str]:
    """Every stage of dvc.yaml (foreach expanded) with its command."""
    with Repo(str(REPO)) as repo:
        return {stage.addressing: stage.cmd for stage in repo.index.stages}


def test_same_jobs_and_commands(tmp_path):
    stages = dvc_stages()
    dry_run = snakemake_dry_run(REPO, tmp_path / "work")
    jobs = parse_jobs(dry_run) - {"all"}
    mapped = set()
    for name in stages:
        base, _, key = name.partition("@")
        assert base in STAGE_TO_RULE, f"dvc stage {name!r} has no Snakemake rule"
        mapped.add(f"{STAGE_TO_RULE[base]}@{key}" if key else STAGE_TO_RULE[base])
    assert mapped == jobs, f"only in dvc.yaml: {sorted(mapped - jobs)}; only in Snakemake: {sorted(jobs - mapped)}"
    for name, cmd in stages.items():
        assert cmd in dry_run, f"dvc stage {name!r} runs `{cmd}`, which no Snakemake job runs"
