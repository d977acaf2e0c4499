"""The workflow on a real SLURM cluster (single node, Debian's slurm-wlm and munge, started by
the test and stopped by pid) through workflow/profiles/slurm, unmodified but for the status
command (no accounting database here) and shorter polling.

Pre-training is one SLURM job of 2 gloo processes: `rap pretrain` inside the job's srun step
relaunches itself under torchrun with ``--nproc_per_node=2``, as it would with one process per
GPU. If the packages are missing and cannot be installed the test fails (CI installs them).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from helpers.snakemake import REPO, run_snakemake, tiny_params
from slurm_cluster import Cluster, ensure_packages

PROFILE = REPO / "workflow" / "profiles" / "slurm"
TARGET = "runs/eval/zeroshot/msrvtt.json"


@pytest.fixture()
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    ensure_packages()
    cluster = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start(cpus=4)  # 2 for the 2-process pre-training, the rest for small jobs beside it
        yield cluster
    finally:
        cluster.stop()
        assert all(p.poll() is not None for p in cluster.procs.values())


@pytest.mark.slow
def test_workflow_on_slurm_two_process_pretraining(slurm_cluster: Cluster, tmp_path: Path):
    params_file = tiny_params(tmp_path, {"pretrain.cpu_procs_per_node": 2})
    proc = run_snakemake(
        tmp_path,
        "--workflow-profile",
        str(PROFILE),
        "--config",
        f"params={params_file.name}",
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
