"""The workflow on a real SLURM cluster (single node, Debian's slurm-wlm and munge, started by
the test and stopped by pid) through workflow/profiles/slurm, unmodified but for the status
command (no accounting database here) and shorter polling; partitions and account come from a
cluster config passed with ``--config cluster=FILE`` (the cluster's partitions are not the
defaults, so nothing would start without it).

Pre-training is one SLURM job of 2 gloo processes: `rap pretrain` inside the job's srun step
relaunches itself under torchrun with ``--nproc_per_node=2``, as it would with one process per
GPU. With CPU binding on, every rank reports the CPUs it may use; then the srun step that a
multi-node rule runs (rap.launch.srun_step, one node here) starts `rap pretrain` asking for
all of the job's CPUs and for fewer, and each sees what it asked for. If the packages are
missing and cannot be installed the test fails (CI installs them).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from rap import launch

from helpers.snakemake import REPO, run_snakemake, tiny_params, workflow_env
from slurm_cluster import PARTITIONS, Cluster, ensure_packages

PROFILE = REPO / "workflow" / "profiles" / "slurm"
TARGET = "runs/eval/zeroshot/msrvtt.json"


@pytest.fixture()
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    ensure_packages()
    cluster = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        # the machine's real CPUs (2 here): binding to CPU ids that do not exist binds nothing
        cluster.start(cpus=len(os.sched_getaffinity(0)))
        yield cluster
    finally:
        cluster.stop()
        assert all(p.poll() is not None for p in cluster.procs.values())


@pytest.mark.slow
def test_workflow_on_slurm_two_process_pretraining(slurm_cluster: Cluster, tmp_path: Path):
    params_file = tiny_params(tmp_path, {"pretrain.cpu_procs_per_node": 2})
    cluster_file = tmp_path / "my-cluster.yaml"
    cluster_file.write_text(json.dumps({"account": "raptest", "partitions": PARTITIONS}))
    proc = run_snakemake(
        tmp_path,
        "--workflow-profile",
        str(PROFILE),
        "--config",
        f"params={params_file.name}",
        f"cluster={cluster_file.name}",
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--seconds-between-status-checks",
        "2",
        TARGET,
        env={"SLURM_CONF": str(slurm_cluster.conf)},
        timeout=480,
    )
    slurm_logs = sorted(tmp_path.glob("logs/slurm/**/*.log"))
    rap_logs = sorted(tmp_path.glob("logs/*/*.log"))
    dump = "\n".join(f"== {p}\n{p.read_text()[-1500:]}" for p in slurm_logs + rap_logs)
    assert proc.returncode == 0, f"snakemake on SLURM failed:\n{proc.stderr[-5000:]}\n{dump}"

    # every job went through sbatch (download x3, extract x3, pretrain, evaluate_zeroshot)
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+)", proc.stderr)
    assert len(submitted) == 8, proc.stderr[-3000:]
    assert (tmp_path / "logs/slurm/rule_pretrain").is_dir()
    # pre-training: one SLURM job, 2 processes under torchrun, as the layout asks
    summary = json.loads((tmp_path / "runs/pretrain/main/train_run.json").read_text())
    assert summary["finished"] and summary["world_size"] == 2
    log = (tmp_path / "logs/pretrain/main.log").read_text()
    assert "launching 2 of 2 processes" in log and "--standalone --nproc_per_node=2" in log
    metrics = json.loads((tmp_path / TARGET).read_text())
    assert 0 <= metrics["t2v"]["R@1"] <= 100
    # each rank of the job's step may use the job's CPUs (threads = 2 processes x 1)
    node_cpus = launch.node_cpus(launch_layout(params_file), 0)
    assert sorted(re.findall(r"rank (\d) of 2: (\d+) CPU\(s\)", log)) == [("0", str(node_cpus)), ("1", str(node_cpus))]

    # the multi-node rule's srun step, on one node: all of the job's CPUs, then fewer
    seen = _cpus_seen_by_training_steps(
        slurm_cluster, tmp_path, params_file, job_cpus=node_cpus, step_cpus=[node_cpus, 1]
    )
    assert seen == [node_cpus, 1]


def launch_layout(params_file: Path):
    from rap.config import load_params

    return load_params(params_file).cfg.pretrain


def _cpus_seen_by_training_steps(
    cluster: Cluster, workdir: Path, params_file: Path, *, job_cpus: int, step_cpus: list[int]
) -> list[int]:
    """One SLURM job of ``job_cpus`` CPUs running `rap pretrain` (one process, one step) in an
    srun step of each size in ``step_cpus``, built by rap.launch.srun_step; the CPUs each
    training process reported."""
    lines = ["#!/bin/bash", "set -e"]
    for i, cpus in enumerate(step_cpus):
        step = launch.srun_step(1, cpus)
        lines.append(
            f"{step}rap pretrain --params {params_file.name} --set pretrain.cpu_procs_per_node=1 "
            f"--max-steps 1 --out runs/cpus-{i} > logs/cpus-{i}.log 2>&1"
        )
    script = workdir / "cpus.sh"
    script.write_text("\n".join(lines) + "\n")
    proc = subprocess.run(
        [
            "sbatch",
            "--wait",
            "--nodes=1",
            "--ntasks=1",
            f"--cpus-per-task={job_cpus}",
            f"--partition={PARTITIONS['gpu']}",
            f"--output={workdir}/logs/cpus-job.out",
            str(script),
        ],
        cwd=workdir,
        env={**workflow_env(), "SLURM_CONF": str(cluster.conf)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    logs = [
        (workdir / f"logs/cpus-{i}.log").read_text() if (workdir / f"logs/cpus-{i}.log").exists() else ""
        for i in range(len(step_cpus))
    ]
    assert proc.returncode == 0, f"{proc.stderr}\n" + "\n".join(logs)
    seen = []
    for text in logs:
        found = re.findall(r"rank 0 of 1: (\d+) CPU\(s\)", text)
        assert len(found) == 1, text[-3000:]
        seen.append(int(found[0]))
    return seen
