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
    "release/dvc.yaml:import": "release_import",
    "release/dvc.yaml:zeroshot": "release_zeroshot",
    "release/dvc.yaml:finetuned": "release_finetuned",
}
# the seed repeats and the authors' released checkpoints are their own target in both engines
# (seeds/dvc.yaml, the rule `seeds`; release/dvc.yaml, the rule `release`)
SEED_PIPELINE = "seeds/dvc.yaml:"
RELEASE_PIPELINE = "release/dvc.yaml:"
OWN_TARGETS = {"seeds": SEED_PIPELINE, "release": RELEASE_PIPELINE}


# the controlled experiment (issue 20) is a DVC pipeline only, declared apart from both engines'
# default and seed pipelines
CONTROLLED_PIPELINE = "controlled/dvc.yaml:"


def dvc_stages() -> dict[str, str]:
    """Every stage of dvc.yaml, seeds/dvc.yaml and release/dvc.yaml (foreach and matrix
    expanded) with its command."""
    with Repo(str(REPO)) as repo:
        return {
            stage.addressing: stage.cmd
            for stage in repo.index.stages
            if not stage.addressing.startswith(CONTROLLED_PIPELINE)
        }


def _job_key(job: str) -> str:
    """A Snakemake job as DVC names its stage: ``rule@recipe=rap,dataset=msrvtt`` ->
    ``rule@rap-msrvtt`` (a matrix stage's values joined by '-', in the output pattern's order)."""
    rule, _, wildcards = job.partition("@")
    if "=" not in wildcards:
        return job
    return f"{rule}@" + "-".join(kv.partition("=")[2] for kv in wildcards.split(","))


def _place_release_files(workdir: Path) -> None:
    """The released files a user would place (their bytes do not matter to a dry run)."""
    from rap.release import RELEASED_FILES
    from rap.reports.layout import release_file

    for name in RELEASED_FILES:
        path = workdir / release_file(name, "data")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


@pytest.mark.parametrize("target", [None, "seeds", "release"], ids=["default", "seeds", "release"])
def test_same_jobs_and_commands(tmp_path, target):
    """``dvc repro`` vs ``snakemake`` (rule all); ``dvc repro seeds/dvc.yaml`` vs ``snakemake
    seeds``, ``dvc repro release/dvc.yaml`` vs ``snakemake release``: those pipelines also run
    the default jobs they need, so their own stages are compared with the jobs the target adds."""
    every = dvc_stages()
    prefix = OWN_TARGETS.get(target)
    stages = {
        n: c
        for n, c in every.items()
        if (n.startswith(prefix) if prefix else not any(n.startswith(p) for p in OWN_TARGETS.values()))
    }
    if target == "release":
        _place_release_files(tmp_path / "work")
    dry_run = snakemake_dry_run(REPO, tmp_path / "work", targets=[target] if target else None)
    jobs = {_job_key(j) for j in parse_jobs(dry_run)} - {"all", *OWN_TARGETS}
    if target:
        default_rules = {
            STAGE_TO_RULE[n] for n in STAGE_TO_RULE if not any(n.startswith(p) for p in OWN_TARGETS.values())
        }
        jobs = {j for j in jobs if j.partition("@")[0] not in default_rules}
    mapped = set()
    for name in stages:
        base, _, key = name.partition("@")
        assert base in STAGE_TO_RULE, f"dvc stage {name!r} has no Snakemake rule"
        mapped.add(f"{STAGE_TO_RULE[base]}@{key}" if key else STAGE_TO_RULE[base])
    assert mapped == jobs, f"only in dvc.yaml: {sorted(mapped - jobs)}; only in Snakemake: {sorted(jobs - mapped)}"
    for name, cmd in stages.items():
        assert cmd in dry_run, f"dvc stage {name!r} runs `{cmd}`, which no Snakemake job runs"
