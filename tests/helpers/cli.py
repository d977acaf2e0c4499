"""Running the real `rap` command from tests: in a subprocess, optionally under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

REPO = Path(__file__).resolve().parents[2]


def set_args(overrides: Mapping[str, Any]) -> list[str]:
    """``{"pretrain.optim.epochs": 2}`` -> ``["--set", "pretrain.optim.epochs=2"]`` (JSON is YAML)."""
    return [a for k, v in overrides.items() for a in ("--set", f"{k}={json.dumps(v)}")]


def rap_command(*args: str, overrides: Mapping[str, Any] | None = None, ranks: int = 1) -> list[str]:
    """``python -m rap.cli ARGS --params params.yaml --set ...``; under
    ``torchrun --standalone --nproc_per_node=ranks`` (gloo on the CPU) when ``ranks > 1``."""
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
        if ranks > 1
        else [sys.executable]
    )
    return [*launcher, "-m", "rap.cli", *args, "--params", str(REPO / "params.yaml"), *set_args(overrides or {})]


def subprocess_env(package_root: Path = REPO, **extra: str) -> dict[str, str]:
    """No tracking, one thread per process (bit-exact CPU kernels), this checkout's rap."""
    return {**os.environ, "RAP_TRACKING": "0", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(package_root), **extra}


def run_ok(cmd: list[str], env: Mapping[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=dict(env), capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc
