"""rap.launch: the torchrun line (and SLURM job shape) for each process layout."""

from __future__ import annotations

import pytest

from rap import launch
from rap.config import ConfigError, PretrainConfig, ProcessLayout, load_params

from helpers.snakemake import REPO

RAP_ARGS = ["pretrain", "--out", "runs/pretrain/main"]
SLURM_8x8 = {
    "SLURM_JOB_NODELIST": "gpu[07-14]",
    "SLURM_NNODES": "8",
    "SLURM_NODEID": "3",
    "SLURM_JOB_ID": "123456",
    "SLURM_PROCID": "3",
}


def test_one_cpu_process_needs_no_torchrun():
    layout = ProcessLayout()
    assert launch.torchrun_argv(layout, RAP_ARGS, {}) is None
    assert launch.step_prefix(layout, 1) == "" and launch.slurm_resources(layout) == {"gpu": 0}


def test_one_node_eight_gpus():
    layout = ProcessLayout(gpus_per_node=8)
    assert launch.torchrun_argv(layout, RAP_ARGS, {}, python="py") == [
        "py",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=8",
        "-m",
        "rap.cli",
        *RAP_ARGS,
    ]
    assert launch.slurm_resources(layout) == {"gpu": 8} and launch.step_prefix(layout, 64) == ""
    assert launch.node_cpus(layout, cpus_per_proc=8) == 64


def test_two_cpu_processes_gloo():
    layout = ProcessLayout(cpu_procs_per_node=2)
    assert layout.world_size == 2
    assert launch.torchrun_options(layout, {}) == ["--standalone", "--nproc_per_node=2"]
    assert launch.slurm_resources(layout) == {"gpu": 0} and launch.node_cpus(layout, 0) == 2


def test_eight_nodes_of_eight_gpus_from_slurm_env():
    """The paper's 64 GPUs: one torchrun per node, rendezvous from SLURM's environment."""
    layout = load_params(REPO / "params.yaml", {"scale": "paper"}).cfg.pretrain
    assert (layout.nodes, layout.gpus_per_node, layout.world_size) == (8, 8, 64)
    assert launch.torchrun_options(layout, SLURM_8x8) == [
        "--nnodes=8",
        "--node_rank=3",
        "--nproc_per_node=8",
        "--rdzv_backend=static",
        "--master_addr=gpu07",
        f"--master_port={20000 + 123456 % 20000}",
        "--rdzv_id=123456",
    ]
    # every node's task gets the job's CPUs and GPUs explicitly, whatever srun would inherit
    assert launch.step_prefix(layout, launch.node_cpus(layout, cpus_per_proc=8)) == (
        "srun --nodes=8 --ntasks-per-node=1 --cpus-per-task=64 --gres=gpu:8 --kill-on-bad-exit=1 "
    )
    assert launch.slurm_resources(layout) == {
        "nodes": 8,
        "tasks": 8,
        "mpi": "srun",
        "gres": "gpu:8",
        "tasks_per_gpu": 0,
    }
    assert launch.torchrun_env({})["TORCHELASTIC_SIGNALS_TO_HANDLE"].endswith("SIGUSR1")


@pytest.mark.parametrize(
    "nodelist, first",
    [
        ("gpu[07-14]", "gpu07"),
        ("n1,n2", "n1"),
        ("solo", "solo"),
        ("a[3,5-6],b[1-2]", "a3"),
        ("rack[1-2]-n[04-05]", "rack1-n04"),
    ],
)
def test_first_host(nodelist, first):
    assert launch.first_host(nodelist) == first


def test_multi_node_outside_slurm_is_a_clear_error():
    layout = ProcessLayout(nodes=2, gpus_per_node=8)
    with pytest.raises(launch.LaunchError, match="SLURM_JOB_NODELIST is unset"):
        launch.torchrun_options(layout, {})
    with pytest.raises(launch.LaunchError, match="nodes=2 but the SLURM job has SLURM_NNODES=8"):
        launch.torchrun_options(layout, SLURM_8x8)


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"pretrain.nodes": 0}, "nodes"),
        ({"pretrain.gpus_per_node": -1}, "gpus_per_node"),
        ({"pretrain.gpus_per_node": 8, "pretrain.cpu_procs_per_node": 2}, "cpu_procs_per_node"),
        ({"pretrain.gpus": 8}, "renamed: set nodes and gpus_per_node"),
    ],
)
def test_bad_layouts_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        load_params(REPO / "params.yaml", overrides)


def test_layout_is_part_of_the_stage_configs():
    assert isinstance(PretrainConfig(), ProcessLayout)


def test_cli_refuses_a_gpu_layout_it_cannot_start(tmp_path, capsys, monkeypatch):
    """`rap pretrain` at the paper layout on a node without 8 GPUs (faked: 1) stops before any work."""
    import torch

    from rap.cli import main

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    rc = main(["pretrain", "--params", str(REPO / "params.yaml"), "--set", "scale=paper", "--out", str(tmp_path)])
    assert rc == 2 and "pretrain.gpus_per_node=8 but this node sees 1 CUDA device(s)" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
