"""The Snakemake workflow: a dry run succeeds and schedules exactly the jobs params.yaml implies;
`snakemake --lint` is clean; and the workflow RUNS end to end (data -> pre-training ->
evaluation -> tables) on params.yaml's embedded scale shrunk through a params file of its own
(`--config params=...`), as a user would shrink it.

:func:`snakemake_jobs` returns the dry run's jobs as ``rule`` or ``rule@wildcard`` strings
(the shape of dvc.yaml's ``stage@key`` names), so that the workflow can be compared with
dvc.yaml's stages.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from rap.checkpoint_io import load_checkpoint
from rap.config import load_params

from helpers.snakemake import (
    REPO,
    assert_tiny_outputs,
    expected_jobs,
    parse_jobs,
    run_snakemake,
    snakemake_dry_run,
    snakemake_jobs,
    tiny_params,
    workflow_env,
)


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
    assert (
        "rap evaluate msrvtt --checkpoint runs/finetune/msrvtt-9k/checkpoint.pt "
        "--out runs/eval/finetuned/msrvtt-9k.json" in out
    )
    assert not any(tmp_path.joinpath("work", d).exists() for d in ("runs", "data", "reports"))  # dry


def test_dry_run_paper_scale_slurm_profile(tmp_path):
    """Paper scale under the SLURM profile: GPU resources and torchrun launches; a shorter
    ablation list and a main run off the reference setting change the job set accordingly."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw.update({"scale": "paper", "ablations": ["racl-none", "frames-2"], "lambda": 2.0})
    params_file = tmp_path / "params-paper.yaml"
    params_file.write_text(yaml.safe_dump(raw), encoding="utf-8")
    params = load_params(params_file)
    cluster_file = tmp_path / "work" / "my-cluster.yaml"  # where the jobs go: the user's file, no edit
    cluster_file.parent.mkdir(parents=True)
    cluster_file.write_text("account: proj7\npartitions: {gpu: a100}\nruntime: {pretrain: 2880}\n")
    out = snakemake_dry_run(
        REPO,
        tmp_path / "work",
        params_file=params_file,
        profile=REPO / "workflow" / "profiles" / "slurm",
        config=[f"cluster={cluster_file.name}"],
    )
    jobs = parse_jobs(out)
    assert jobs == expected_jobs(params)
    assert "pretrain_ablation@lambda-0.5" not in jobs
    pre = params.cfg.pretrain
    assert (pre.nodes, pre.gpus_per_node) == (8, 8)  # the paper's 64 GPUs
    # several nodes: the job's own srun step starts one `rap pretrain` (one torchrun) per node
    # with every node's CPUs and GPUs named (what a step inherits differs between Slurm versions)
    cpus = params.cfg.data.num_workers * pre.gpus_per_node
    assert (
        f"srun --nodes={pre.nodes} --ntasks-per-node=1 --cpus-per-task={cpus} --gres=gpu:{pre.gpus_per_node} "
        "--kill-on-bad-exit=1 rap pretrain --out runs/pretrain/main --params params.yaml" in out
    )
    assert re.search(
        rf"rule pretrain:\n(?:.*\n)*?\s+resources: .*nodes={pre.nodes}.*"
        rf"tasks={pre.nodes}.*mpi=srun.*gres=gpu:{pre.gpus_per_node}.*slurm_partition=a100.*runtime=2880.*"
        r"slurm_account=proj7",
        out,
    )
    # the file's partition for GPU rules, the default one for CPU rules
    assert re.search(r"rule extract:\n(?:.*\n)*?\s+resources: .*slurm_partition=cpu", out)
    # extraction as a job array: data.extract_shards jobs per dataset, then their merge
    n = params.cfg.data.extract_shards
    assert n > 1 and f"rap extract webvid --shard {n - 1}/{n} --params params.yaml" in out
    assert f"rap extract webvid --merge {n} --params params.yaml" in out
    assert re.search(r"rule extract_shard:\n(?:.*\n)*?\s+resources: .*slurm_partition=cpu", out)
    # training jobs get SIGURG before their time limit (the profile's preemption set-up)
    assert re.search(r"rule pretrain:\n(?:.*\n)*?\s+resources: .*slurm_extra=--signal=URG@120", out)
    # fine-tuning on one node of 8 GPUs: one task, rap starts torchrun itself
    assert "rap finetune msrvtt-7k --checkpoint runs/pretrain/main/checkpoint.pt" in out
    assert re.search(r"rule finetune:\n(?:.*\n)*?\s+resources: .*gpu=8.*slurm_partition=a100", out)


@pytest.mark.parametrize("bad", [{"lambda": -1.0}, {"ablations": ["lambda-x"]}])
def test_dry_run_rejects_bad_params(tmp_path, bad):
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw.update(bad)
    params_file = tmp_path / "bad.yaml"
    params_file.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(AssertionError, match="lambda"):
        snakemake_dry_run(REPO, tmp_path / "work", params_file=params_file)


# The smallest DAG that reaches every table: the pre-training mix and MSRVTT only, one
# fine-tuning task, one ablation run (racl-none, which Figure 3 needs); 1 epoch = 2 steps.
def test_lint_is_clean(tmp_path):
    shutil.copyfile(REPO / "params.yaml", tmp_path / "params.yaml")
    proc = run_snakemake(tmp_path, "--lint", timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "workflow is in a good condition" in out and "Lints for" not in out, out


@pytest.mark.slow
def test_workflow_runs_for_real(tmp_path):
    """Every job runs its real `rap` command, each declared output is written (no
    MissingOutputException), and a second invocation finds nothing to do. Then the seed
    repeats' own target (`seeds`, not part of `all`) runs for real on one repeat, reusing the
    seed-0 runs: one pre-training, its evaluation, the seed tables."""
    params_file = tiny_params(tmp_path, top_level={"seed_runs": ["racl-none+seed-1"]})
    proc = run_snakemake(tmp_path, "--cores", "2", "--config", f"params={params_file.name}")
    logs = "\n".join(f"== {p}\n{p.read_text()[-2000:]}" for p in sorted(tmp_path.glob("logs/**/*.log")))
    assert proc.returncode == 0, f"snakemake failed:\n{proc.stderr[-6000:]}\n{logs}"
    # download and extract x3 (WebVid, CC3M, MSRVTT), pre-training, the racl-none ablation and the
    # zero-shot evaluation of each, one fine-tuning and its evaluation, tables, figure, speed, all
    done = re.findall(r"(\d+) of (\d+) steps \(100%\) done", proc.stderr)
    assert done == [("16", "16")], proc.stderr[-4000:]
    assert_tiny_outputs(tmp_path)
    assert not (tmp_path / "params.yaml").exists()  # every command read the tiny file
    again = run_snakemake(tmp_path, "--cores", "2", "--config", f"params={params_file.name}", timeout=120)
    assert again.returncode == 0 and "Nothing to be done" in again.stderr, again.stderr

    seeds = run_snakemake(tmp_path, "seeds", "--cores", "2", "--config", f"params={params_file.name}")
    logs = "\n".join(f"== {p}\n{p.read_text()[-2000:]}" for p in sorted(tmp_path.glob("logs/**/seed*.log")))
    assert seeds.returncode == 0, f"snakemake seeds failed:\n{seeds.stderr[-6000:]}\n{logs}"
    assert "4 of 4 steps (100%) done" in seeds.stderr  # pretrain_seed, evaluate_seed, seed_tables, seeds
    trained = load_checkpoint(tmp_path / "runs/seeds/racl-none+seed-1/checkpoint.pt")["params"]
    assert (trained["seed"], trained["racl"]) == (1, "none")
    metrics = json.loads((tmp_path / "runs/eval/seeds/racl-none+seed-1.json").read_text())
    assert 0 <= metrics["localisation"]["patch"]["cls_query"]["auc"] <= 1
    assert -1 <= metrics["diagnostics"]["token_collapse"] <= 1
    table9 = (tmp_path / "reports/seeds/table9.md").read_text()
    none_row = next(ln for ln in table9.splitlines() if ln.startswith("| RaCL none"))
    cells = [c.strip() for c in none_row.strip().strip("|").split("|")]
    assert cells[1] == "0, 1" and " q ±" in cells[2]  # two seeds: a t interval and the bootstrap


def test_unknown_workflow_config_key(tmp_path):
    shutil.copyfile(REPO / "params.yaml", tmp_path / "params.yaml")
    proc = run_snakemake(tmp_path, "-n", "--cores", "1", "--config", "lambda=2.0", timeout=120)
    assert proc.returncode != 0 and "unknown key(s) ['lambda']" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_sharded_extraction_runs_for_real(tmp_path):
    """data.extract_shards 3: three `rap extract --shard I/3` jobs and the merge, for real; the
    index is byte-identical to the one of the unsharded command (dvc.yaml's), run beside it."""
    params_file = tiny_params(tmp_path, {"data.extract_shards": 3})
    proc = run_snakemake(tmp_path, "data/index/msrvtt.jsonl", "--cores", "2", "--config", f"params={params_file.name}")
    logs = "\n".join(f"== {p}\n{p.read_text()[-2000:]}" for p in sorted(tmp_path.glob("logs/**/*.log")))
    assert proc.returncode == 0, f"snakemake failed:\n{proc.stderr[-6000:]}\n{logs}"
    assert "5 of 5 steps (100%) done" in proc.stderr  # download, 3 shards, the merge
    assert sorted(p.name for p in (tmp_path / "data/index/msrvtt.shards").glob("?-of-3.jsonl")) == [
        "0-of-3.jsonl",
        "1-of-3.jsonl",
        "2-of-3.jsonl",
    ]
    sharded = (tmp_path / "data/index/msrvtt.jsonl").read_bytes()
    (tmp_path / "data/index").rename(tmp_path / "data/index-sharded")
    one = subprocess.run(
        ["rap", "extract", "msrvtt", "--params", params_file.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=workflow_env(),
    )
    assert one.returncode == 0, one.stderr[-3000:]
    assert (tmp_path / "data/index/msrvtt.jsonl").read_bytes() == sharded
