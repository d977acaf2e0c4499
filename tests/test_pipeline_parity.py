"""dvc.yaml (the pipeline of record) and the Snakemake workflow cannot drift apart: the same
jobs, running the same `rap` commands."""

from __future__ import annotations

from pathlib import Path

import pytest
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
    "speed": "speed",
    "seeds/dvc.yaml:seed-pretrain": "pretrain_seed",
    "seeds/dvc.yaml:seed-zeroshot": "evaluate_seed",
    "seeds/dvc.yaml:seed-tables": "seed_tables",
}
# the seed repeats are their own target in both engines (seeds/dvc.yaml; the rule `seeds`)
SEED_PIPELINE = "seeds/dvc.yaml:"


# the controlled experiment (issue 20) is a DVC pipeline only, declared apart from both engines'
# default and seed pipelines
CONTROLLED_PIPELINE = "controlled/dvc.yaml:"


def dvc_stages() -> dict[str, str]:
    """Every stage of dvc.yaml and seeds/dvc.yaml (foreach expanded) with its command."""
    with Repo(str(REPO)) as repo:
        return {
            stage.addressing: stage.cmd
            for stage in repo.index.stages
            if not stage.addressing.startswith(CONTROLLED_PIPELINE)
        }


@pytest.mark.parametrize("seeds", [False, True], ids=["default", "seeds"])
def test_same_jobs_and_commands(tmp_path, seeds):
    """``dvc repro`` vs ``snakemake`` (rule all), and ``dvc repro seeds/dvc.yaml`` vs
    ``snakemake seeds``: the seed pipeline also runs the default jobs it needs, so its own
    stages are compared with the jobs the `seeds` target adds."""
    every = dvc_stages()
    stages = {n: c for n, c in every.items() if n.startswith(SEED_PIPELINE) == seeds}
    dry_run = snakemake_dry_run(REPO, tmp_path / "work", targets=["seeds"] if seeds else None)
    jobs = parse_jobs(dry_run) - {"all", "seeds"}
    if seeds:
        default_rules = {STAGE_TO_RULE[n] for n in STAGE_TO_RULE if not n.startswith(SEED_PIPELINE)}
        jobs = {j for j in jobs if j.partition("@")[0] not in default_rules}
    mapped = set()
    for name in stages:
        base, _, key = name.partition("@")
        assert base in STAGE_TO_RULE, f"dvc stage {name!r} has no Snakemake rule"
        mapped.add(f"{STAGE_TO_RULE[base]}@{key}" if key else STAGE_TO_RULE[base])
    assert mapped == jobs, f"only in dvc.yaml: {sorted(mapped - jobs)}; only in Snakemake: {sorted(jobs - mapped)}"
    for name, cmd in stages.items():
        assert cmd in dry_run, f"dvc stage {name!r} runs `{cmd}`, which no Snakemake job runs"
