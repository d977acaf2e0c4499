"""Pinned CPU kernels: the embedded run's bytes as a function of code, params and seed only.

Which SIMD kernels torch (ATen), MKL and oneDNN pick is decided by the host: on an AVX-512
machine the same three pre-training steps change 146-153 of 167 weight tensors against the
same steps with the AVX2 kernels, and each of the three libraries alone changes them
(measured; docs/DESIGN.md, "Reproducibility"). In the pinned mode (``cpu.kernels: avx2``, the
embedded default) every ``rap`` command, before torch loads:

- sets ``ATEN_CPU_CAPABILITY=avx2`` (ATen's vectorised kernels), ``MKL_CBWR=AVX2,STRICT`` (MKL's
  conditional numerical reproducibility: the AVX2 code path on any Intel or AMD processor that
  has it) and ``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN's JIT), overriding what the environment says;
- fixes the thread count (``OMP_NUM_THREADS`` = ``cpu.threads``) unless the environment sets it
  explicitly (torchrun sets 1 per process; a user's explicit choice is respected and recorded),
  and makes ``MKL_NUM_THREADS`` agree (torch starts with MKL's count where both are set);
and, once torch is loaded (:func:`rap.training.determinism.seed_everything`):

- turns torch's oneDNN (mkldnn) convolutions off: their blocking follows the host's cache
  sizes, which the ISA cap does not fix; the patch embedding then runs ATen's own convolution
  (im2col + MKL GEMM, pinned above);
- checks that torch really runs the pinned capability (a script that ran torch before pinning
  gets a clear error, not silently different bytes).

``cpu.kernels: native`` (the paper scale, and the switch for an unpinned CPU run) leaves the
host's best kernels (and undoes a pin inherited from a pinned parent process; in a process whose
torch already runs pinned kernels it changes nothing, and the provenance says so). The
settings a run used are its provenance (:func:`provenance`, written to ``train_run.json`` and
MLflow). This module does not import torch at load time.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any, MutableMapping

from rap.errors import RapError

__all__ = ["KERNELS", "PINNED_ENV", "PinningError", "check_pinned", "pin", "pinned_isa", "provenance"]

# The instruction sets a run can be pinned to, and the environment that pins each library.
PINNED_ENV: dict[str, dict[str, str]] = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}
KERNELS = ("native", *PINNED_ENV)
# what torch.backends.cpu.get_cpu_capability() reports once pinned
_TORCH_CAPABILITY = {"avx2": "AVX2"}
# set by pin(): the instruction set this process (and its children) is pinned to
PIN_MARKER = "RAP_CPU_KERNELS"
THREADS_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


class PinningError(RapError):
    """The CPU kernels could not be pinned as the params ask."""


def pin(kernels: str, threads: int | None, environ: MutableMapping[str, str] = os.environ) -> None:
    """Pin the kernels' instruction set and the thread count; call before torch loads.

    ``kernels``/``threads`` are ``cpu.kernels``/``cpu.threads`` of the params. Once torch has
    run a kernel in this process its instruction set is fixed (ATen reads it at the first
    dispatch, MKL and oneDNN at their first call): if it differs from the pinned one,
    :class:`PinningError` names what to do.
    """
    if kernels == "native":
        if environ is os.environ and "torch" in sys.modules:
            return  # this process's kernels are fixed already: provenance reports what is in effect
        inherited = environ.pop(PIN_MARKER, None)  # undo a pin inherited from a pinned parent
        for key in PINNED_ENV.get(inherited or "", {}):
            environ.pop(key, None)
        return
    if kernels not in PINNED_ENV:
        raise PinningError(f"cpu.kernels={kernels!r}: expected one of {KERNELS}")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise PinningError(
            f"cpu.kernels={kernels!r} pins x86-64 kernels; this is a {platform.machine()} machine: "
            "set cpu.kernels: native (its bytes will differ from the committed x86-64 results)"
        )
    environ.update(PINNED_ENV[kernels])
    environ[PIN_MARKER] = kernels
    omp, mkl = THREADS_VARS
    if threads is not None and omp not in environ:
        environ[omp] = str(threads)
    if omp in environ:  # torch starts with MKL's count where both are set: one count for both
        environ[mkl] = environ[omp]
    if "torch" in sys.modules:
        check_pinned()


def pinned_isa(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """The instruction set :func:`pin` pinned this process to, or None (native kernels)."""
    return environ.get(PIN_MARKER) or None


def check_pinned() -> None:
    """With torch loaded: in the pinned mode, oneDNN convolutions off and the capability torch
    really runs equal to the pinned one (called when a run starts)."""
    isa = pinned_isa()
    if isa is None:
        return
    import torch

    torch.backends.mkldnn.enabled = False
    running = torch.backends.cpu.get_cpu_capability()
    if running != _TORCH_CAPABILITY[isa]:
        raise PinningError(
            f"cpu.kernels={isa!r} but torch runs its {running} kernels: torch ran before the kernels "
            f"were pinned. Call rap.cpu_kernels.pin() before `import torch` (the rap command does), or "
            f"set {' '.join(f'{k}={v}' for k, v in PINNED_ENV[isa].items())} in the environment"
        )


def provenance() -> dict[str, Any]:
    """The kernel settings this process runs with (for train_run.json and MLflow): the same on
    every machine in the pinned mode, the host's own in the native one."""
    import torch

    return {
        "cpu_kernels": pinned_isa() or "native",
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl_cbwr": os.environ.get("MKL_CBWR"),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "mkldnn_enabled": bool(torch.backends.mkldnn.enabled),
        "torch_threads": torch.get_num_threads(),
    }
