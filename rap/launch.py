"""How a training run's processes start: the one place that turns a process layout
(``pretrain.nodes``, ``gpus_per_node``, ``cpu_procs_per_node`` of params.yaml) into a command.

* one process: plain ``rap`` (no torchrun);
* one node, several processes: ``torchrun --standalone --nproc_per_node=P``;
* several nodes: one torchrun per node (started by ``srun`` with one task per node), each
  with a static rendezvous read from SLURM's environment: the first host of
  ``SLURM_JOB_NODELIST`` is the master, ``SLURM_NODEID`` the node rank, ``SLURM_NNODES`` the
  node count (checked against the layout) and ``SLURM_JOB_ID`` the run id and master port.

``rap pretrain`` / ``rap finetune`` relaunch themselves through :func:`torchrun_argv`, and the
Snakemake workflow asks :func:`step_prefix` and :func:`slurm_resources` for the job that runs
them, so the layout is read in one place whichever engine starts the run.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from rap.config import ConfigError, ProcessLayout

# Signals torchrun forwards to its ranks. Its default list lacks SIGUSR1, on which it would
# die and leave its ranks behind. (SIGURG, what workflow/profiles/slurm sends before a time
# limit, torchrun ignores: it reaches the ranks straight from SLURM.)
TORCHRUN_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
PORT_BASE, PORT_SPAN = 20000, 20000  # master port = PORT_BASE + job id mod PORT_SPAN


class LaunchError(RuntimeError):
    """The environment cannot start the requested layout (e.g. several nodes outside SLURM)."""


@dataclass(frozen=True)
class Rendezvous:
    """Static torchrun rendezvous of one node of a multi-node job."""

    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int
    run_id: str


def first_host(nodelist: str) -> str:
    """First host of a SLURM hostlist: ``gpu[03-05,07],login1`` -> ``gpu03``;
    ``rack[1-2]-n[4-5]`` -> ``rack1-n4`` (what ``scontrol show hostnames`` prints first)."""
    depth, head = 0, ""
    for ch in nodelist.strip():
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            break
        head += ch
    if not head:
        raise LaunchError(f"SLURM_JOB_NODELIST={nodelist!r} names no host")
    return re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[-,]", m.group(1))[0], head)


def _slurm_int(env: Mapping[str, str], name: str) -> int:
    raw = env.get(name)
    if raw is None or not raw.strip().isdigit():
        raise LaunchError(
            f"a multi-node run reads {name} from SLURM's environment, but it is {raw!r}: "
            "run it through workflow/profiles/slurm (srun, one task per node)"
        )
    return int(raw)


def slurm_rendezvous(layout: ProcessLayout, env: Mapping[str, str]) -> Rendezvous:
    """The rendezvous of this node, from the environment srun gives each task."""
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise LaunchError(
            f"nodes={layout.nodes} needs SLURM's environment (SLURM_JOB_NODELIST is unset): "
            "run it through workflow/profiles/slurm, or start torchrun on each node yourself"
        )
    nnodes = _slurm_int(env, "SLURM_NNODES")
    if nnodes != layout.nodes:
        raise LaunchError(f"params ask for nodes={layout.nodes} but the SLURM job has SLURM_NNODES={nnodes}")
    job_id = _slurm_int(env, "SLURM_JOB_ID")
    return Rendezvous(
        nnodes=nnodes,
        node_rank=_slurm_int(env, "SLURM_NODEID"),
        master_addr=first_host(nodelist),
        master_port=PORT_BASE + job_id % PORT_SPAN,
        run_id=str(job_id),
    )


def torchrun_options(layout: ProcessLayout, env: Mapping[str, str]) -> list[str] | None:
    """torchrun's options for ``layout`` on this node; None when one process needs no torchrun."""
    if layout.world_size == 1:
        return None
    per_node = f"--nproc_per_node={layout.procs_per_node}"
    if layout.nodes == 1:
        return ["--standalone", per_node]
    rdzv = slurm_rendezvous(layout, env)
    return [
        f"--nnodes={rdzv.nnodes}",
        f"--node_rank={rdzv.node_rank}",
        per_node,
        "--rdzv_backend=static",
        f"--master_addr={rdzv.master_addr}",
        f"--master_port={rdzv.master_port}",
        f"--rdzv_id={rdzv.run_id}",
    ]


def torchrun_argv(
    layout: ProcessLayout, rap_args: Sequence[str], env: Mapping[str, str], python: str = "python"
) -> list[str] | None:
    """``python -m torch.distributed.run OPTIONS -m rap.cli RAP_ARGS`` (None for one process)."""
    options = torchrun_options(layout, env)
    if options is None:
        return None
    return [python, "-m", "torch.distributed.run", *options, "-m", "rap.cli", *rap_args]


def torchrun_env(env: Mapping[str, str]) -> dict[str, str]:
    """The launcher's environment with SIGUSR1 among the signals torchrun forwards to its ranks."""
    return {**env, "TORCHELASTIC_SIGNALS_TO_HANDLE": env.get("TORCHELASTIC_SIGNALS_TO_HANDLE", TORCHRUN_SIGNALS)}


def srun_step(nodes: int, cpus_per_task: int, gpus_per_node: int = 0) -> str:
    """An srun step of one task per node that states each task's resources explicitly.

    Whether a step inherits the job's CPUs depends on the Slurm version and configuration:
    since 22.05 srun no longer reads ``SLURM_CPUS_PER_TASK``, and Snakemake's job-step
    executor strips ``SLURM_*`` variables, so without ``--cpus-per-task`` a node's ranks and
    their loader workers may all be bound to one core (with ``TaskPlugin=task/affinity``).
    The GPUs are named too (``--gres``), so the step never depends on the default either.
    """
    parts = ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", f"--cpus-per-task={max(1, cpus_per_task)}"]
    if gpus_per_node:
        parts.append(f"--gres=gpu:{gpus_per_node}")
    parts.append("--kill-on-bad-exit=1")
    return " ".join(parts) + " "


def step_prefix(layout: ProcessLayout, cpus_per_node: int) -> str:
    """What runs a `rap` training command inside its SLURM job: nothing on one node (the
    SLURM executor already wraps the job in a one-task srun step that gets the job's
    ``--cpus-per-task``); on several nodes an srun step of one task per node
    (:func:`srun_step`, with the job's ``cpus_per_node``: :func:`node_cpus`), each of which
    starts that node's torchrun."""
    if layout.nodes == 1:
        return ""
    return srun_step(layout.nodes, cpus_per_node, layout.gpus_per_node)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask: what SLURM's CPU binding leaves it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def node_cpus(layout: ProcessLayout, cpus_per_proc: int) -> int:
    """CPU cores one node's torchrun needs: ``cpus_per_proc`` (at least 1) per process."""
    return max(1, cpus_per_proc) * layout.procs_per_node


def slurm_resources(layout: ProcessLayout) -> dict[str, int | str]:
    """Snakemake resources of the job (snakemake-executor-plugin-slurm names); the job's
    ``threads`` (:func:`node_cpus`) become ``--cpus-per-task``.

    One node: ``gpu`` (the plugin's ``--gpus``). Several nodes: ``gres=gpu:G`` per node, one
    task per node, and ``mpi`` so that the plugin runs the rule's own srun (:func:`step_prefix`)
    rather than wrapping it in a one-task step; ``tasks_per_gpu=0`` stops the plugin from
    turning ``tasks`` into ``--ntasks-per-gpu``.
    """
    if layout.nodes == 1:
        return {"gpu": layout.gpus_per_node}
    resources: dict[str, int | str] = {"nodes": layout.nodes, "tasks": layout.nodes, "mpi": "srun"}
    if layout.gpus_per_node:
        resources.update(gres=f"gpu:{layout.gpus_per_node}", tasks_per_gpu=0)
    return resources


def check_layout(layout: ProcessLayout, what: str) -> None:
    """Stop before any work when ``layout`` cannot run here (named by the params key)."""
    if layout.gpus_per_node:
        import torch

        visible = torch.cuda.device_count()
        if visible < layout.gpus_per_node:
            raise ConfigError(
                f"{what}.gpus_per_node={layout.gpus_per_node} but this node sees {visible} CUDA device(s)"
            )
