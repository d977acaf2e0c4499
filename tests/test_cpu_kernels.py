"""Pinned CPU kernels (rap/cpu_kernels.py; docs/DESIGN.md, "Reproducibility"): in the pinned
mode a pre-training writes the same bytes whether the host's best instruction set is offered to
torch, MKL and oneDNN or withheld from them, i.e. on an AVX-512 machine and on an AVX2 one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rap.config import ConfigError, load_params
from rap.cpu_kernels import PIN_MARKER, PINNED_ENV, PinningError, pin, pinned_isa
from rap.run_files import TRAIN_RUN

from helpers.cli import rap_command, run_ok, subprocess_env
from helpers.config import PARAMS_YAML, shrunk_overrides

HOST_AVX512 = "avx512f" in Path("/proc/cpuinfo").read_text()
# The host's best ISA offered to every library (ATen is told so explicitly: pinning must override
# what the environment says), and withheld from every library, as on a machine with AVX2 only.
OFFERED = {"ATEN_CPU_CAPABILITY": "avx512"} if HOST_AVX512 else {}
WITHHELD = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
KERNEL_VARS = (*PINNED_ENV["avx2"], PIN_MARKER, "MKL_ENABLE_INSTRUCTIONS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _env(isa: dict[str, str], threads: str | None) -> dict[str, str]:
    """A shell with no kernel settings of this test process (which is pinned), then ``isa``."""
    env = {k: v for k, v in subprocess_env().items() if k not in KERNEL_VARS}
    return {**env, **isa, **({"OMP_NUM_THREADS": threads} if threads else {})}


def _pretrain(corpus_root: Path, out: Path, env: dict[str, str], kernels: str) -> dict[str, bytes]:
    overrides = {**shrunk_overrides(corpus_root), "cpu.kernels": kernels}
    run_ok(rap_command("pretrain", "--out", str(out), "--max-steps", "2", overrides=overrides), env)
    return {name: (out / name).read_bytes() for name in ("checkpoint.pt", "loss.csv", TRAIN_RUN)}


def _cpu(run: dict[str, bytes]) -> dict:
    return json.loads(run[TRAIN_RUN])["cpu"]


@pytest.mark.slow
def test_pinned_bytes_do_not_depend_on_the_host_isa(corpus_root: Path, tmp_path: Path) -> None:
    # as `make repro` runs: no thread setting in the environment, cpu.threads from params.yaml
    offered, withheld = (
        _pretrain(corpus_root, tmp_path / n, _env(e, None), "avx2") for n, e in (("a", OFFERED), ("b", WITHHELD))
    )
    threads = load_params(PARAMS_YAML).cfg.cpu.threads
    assert (
        _cpu(offered)
        == _cpu(withheld)
        == {
            "cpu_kernels": "avx2",
            "aten_capability": "AVX2",
            "mkl_cbwr": "AVX2,STRICT",
            "onednn_max_cpu_isa": "AVX2",
            "mkldnn_enabled": False,
            "torch_threads": threads,
        }
    )
    assert offered["checkpoint.pt"] == withheld["checkpoint.pt"]
    assert offered["loss.csv"] == withheld["loss.csv"]

    # the control: unpinned, the instruction set the host offers decides the bytes
    native = [
        _pretrain(corpus_root, tmp_path / f"native-{n}", _env(e, "1"), "native")
        for n, e in (("a", OFFERED), ("b", WITHHELD))
    ]
    assert [_cpu(r)["cpu_kernels"] for r in native] == ["native", "native"]
    if HOST_AVX512:
        assert _cpu(native[0])["aten_capability"] == "AVX512"
        assert native[0]["checkpoint.pt"] != native[1]["checkpoint.pt"]


def test_pin_sets_every_library_and_respects_an_explicit_thread_count() -> None:
    env: dict[str, str] = {"ATEN_CPU_CAPABILITY": "avx512"}
    pin("avx2", 2, env)
    assert env == {**PINNED_ENV["avx2"], PIN_MARKER: "avx2", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "2"}  # e.g. a child of a pinned process under torchrun
    pin("avx2", 2, env)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"
    env = {PIN_MARKER: "avx2", **PINNED_ENV["avx2"], "OMP_NUM_THREADS": "2"}  # a pinned parent's
    pin("native", 2, env)
    assert env == {"OMP_NUM_THREADS": "2"}


def test_native_in_a_pinned_process_keeps_the_truth() -> None:
    """This test process runs pinned kernels (tests/helpers/config.py): a `rap` command run in it
    with `cpu.kernels: native` (e.g. the paper scale) cannot unpin torch, and its provenance
    must keep saying avx2."""
    before = dict(os.environ)
    pin("native", None)
    assert dict(os.environ) == before and pinned_isa() == "avx2"


def test_pinning_after_torch_loaded_is_an_error() -> None:
    """torch ran first (here with ATen's scalar kernels): the pin cannot take, and says why."""
    code = "import torch; torch.ones(64).exp().sum(); from rap import cpu_kernels; cpu_kernels.pin('avx2', None)"
    env = _env({"ATEN_CPU_CAPABILITY": "default"}, "1")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert PinningError.__name__ in proc.stderr
    assert "torch runs its DEFAULT kernels: torch ran before the kernels were pinned" in proc.stderr


@pytest.mark.parametrize(("key", "value"), [("cpu.kernels", "avx512"), ("cpu.threads", 0)])
def test_bad_cpu_settings_are_rejected(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_params(PARAMS_YAML, {key: value})
