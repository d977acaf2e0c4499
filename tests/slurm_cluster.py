"""A real single-node SLURM cluster for the tests, from Debian's packages (slurm-wlm, munge).

Everything it writes lives under one directory (its own munge key and socket, state, spool,
logs) except slurm.conf, which must sit at SLURM's default path /etc/slurm/slurm.conf: the
Snakemake jobstep executor drops every SLURM_* variable (SLURM_CONF included) before its srun,
which then finds no other configuration. The file is written only when absent and removed
again at the end (an existing one is never touched: the cluster refuses to start). munged,
slurmctld and slurmd run in the foreground as children of the test, so they are stopped by
pid, on free ports.

The node offers two partitions, ``rapcpu`` and ``rapgpu`` (:data:`PARTITIONS`: not the
workflow's default names, so a job only starts when the workflow's cluster config reached
sbatch) and declares the profile's memory (``SlurmdParameters=config_overrides``: the scheduler
trusts the declared node), so workflow/profiles/slurm runs unmodified. CPU binding is on
(``TaskPlugin=task/affinity``): a step sees only the CPUs it was given, so the CPU tests can
fail; declare the machine's real CPU count, since SLURM binds to CPU ids that must exist.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
PACKAGES = ("slurm-wlm", "munge")
PARTITIONS = {"cpu": "rapcpu", "gpu": "rapgpu"}
NODE_MEMORY_MB = 300_000  # above the profile's largest request (pre-training: 256,000 MB)


class ClusterError(RuntimeError):
    pass


def sbin(name: str) -> str:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin") or ""


def ensure_packages() -> None:
    """Install slurm-wlm and munge with apt-get when absent (as root); a clear error otherwise."""
    if all(sbin(d) for d in DAEMONS):
        return
    if os.geteuid() != 0:
        raise ClusterError(
            f"SLURM daemons {[d for d in DAEMONS if not sbin(d)]} are missing and the tests are not "
            f"root: install them with `apt-get install -y {' '.join(PACKAGES)}` (.ci/run does)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    proc = subprocess.run(
        ["apt-get", "install", "-y", "-qq", *PACKAGES], capture_output=True, text=True, env=env, timeout=900
    )
    if proc.returncode != 0 or not all(sbin(d) for d in DAEMONS):
        raise ClusterError(f"could not install {PACKAGES} with apt-get (rc {proc.returncode}):\n{proc.stderr[-3000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    root: Path
    host: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    conf: Path = Path("/etc/slurm/slurm.conf")
    wrote_conf: bool = False

    @property
    def env(self) -> dict[str, str]:
        """Environment for SLURM clients (sbatch, squeue, srun) talking to this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def write_config(self, cpus: int) -> None:
        for d in ("state", "spool", "log", "munge"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        r = self.root
        if self.conf.exists():
            raise ClusterError(
                f"{self.conf} exists: this machine has a SLURM configuration of its own, which "
                "the test cluster will not replace"
            )
        self.conf.parent.mkdir(parents=True, exist_ok=True)
        self.wrote_conf = True
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=raptest",
                    f"SlurmctldHost={self.host}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    f"SlurmctldPort={free_port()}",
                    f"SlurmdPort={free_port()}",
                    f"AuthInfo=socket={r}/munge/munge.sock",
                    f"StateSaveLocation={r}/state",
                    f"SlurmdSpoolDir={r}/spool",
                    f"SlurmctldPidFile={r}/slurmctld.pid",
                    f"SlurmdPidFile={r}/slurmd.pid",
                    f"SlurmctldLogFile={r}/log/slurmctld.log",
                    f"SlurmdLogFile={r}/log/slurmd.log",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/affinity",  # CPU binding: a step sees only the CPUs it was given
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "AccountingStorageType=accounting_storage/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "MpiDefault=none",
                    "ReturnToService=2",
                    "SlurmdParameters=config_overrides",
                    "SchedulerParameters=sched_interval=2",
                    f"NodeName={self.host} CPUs={cpus} RealMemory={NODE_MEMORY_MB} State=UNKNOWN",
                    f"PartitionName={PARTITIONS['cpu']} Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
                    f"PartitionName={PARTITIONS['gpu']} Nodes={self.host} MaxTime=INFINITE State=UP",
                ]
            )
            + "\n"
        )

    def start(self, cpus: int) -> None:
        if os.geteuid() != 0:
            raise ClusterError(
                "the test cluster runs its daemons as root (SlurmUser=root) and writes "
                "/etc/slurm/slurm.conf: run the SLURM test as root, as CI does"
            )
        self.write_config(cpus)
        m = self.root / "munge"
        self._spawn(
            "munged",
            [
                sbin("munged"),
                "--foreground",
                "--force",
                f"--key-file={m}/munge.key",
                f"--socket={m}/munge.sock",
                f"--pid-file={m}/munged.pid",
                f"--log-file={m}/munged.log",
                f"--seed-file={m}/munged.seed",
            ],
        )
        self._wait(lambda: (m / "munge.sock").exists(), "munged's socket", "munge/munged.log")
        self._spawn("slurmctld", [sbin("slurmctld"), "-D", "-f", str(self.conf)])
        self._spawn("slurmd", [sbin("slurmd"), "-D", "-f", str(self.conf)])
        self._wait(self._node_idle, "the node to be idle", "log/slurmd.log")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = (self.root / "log" / f"{name}.out").open("w")
        self.procs[name] = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )

    def _node_idle(self) -> bool:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, env=self.env)
        return proc.returncode == 0 and "idle" in proc.stdout

    def _wait(self, ready, what: str, log: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        dead: dict[str, int | None] = {}
        while time.monotonic() < deadline and not dead:
            if ready():
                return
            dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
            time.sleep(0.5)
        tail = (self.root / log).read_text()[-3000:] if (self.root / log).exists() else ""
        raise ClusterError(f"no {what} after {timeout:.0f} s (daemons that exited, with their status: {dead}):\n{tail}")

    def stop(self) -> None:
        """SIGTERM each daemon this cluster started (by pid), SIGKILL after 15 s."""
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        if self.wrote_conf:
            self.conf.unlink(missing_ok=True)
