"""Numeric precision of training and evaluation on a device: the one place that turns the
``precision`` / ``tf32`` settings of params.yaml into autocast dtypes and matmul flags.

* ``precision: auto`` - bf16 autocast on a GPU where bf16 is native (compute capability >= 8.0,
  Ampere or newer); on an older GPU training takes fp16 with a GradScaler (the paper's V100s)
  and evaluation stays fp32; fp32 on the CPU, so the embedded scale is bitwise reproducible.
  ``torch.cuda.is_bf16_supported()`` also says yes where bf16 is only emulated (several times
  slower), hence the capability test.
* ``tf32: true`` - fp32 matmuls and convolutions (those autocast leaves in fp32: losses,
  norms, the optimiser's view of the weights) on TF32 tensor cores on Ampere or newer; an H100
  does ~989 dense TF/s in TF32/bf16 against ~67 in fp32. No effect on the CPU or older GPUs.
"""

from __future__ import annotations

import torch

__all__ = ["BF16_NATIVE_CAPABILITY", "bf16_native", "training_dtype", "evaluation_dtype", "apply_tf32"]

BF16_NATIVE_CAPABILITY = (8, 0)  # Ampere: bf16 and TF32 tensor cores; before it bf16 is emulated
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def bf16_native(device: torch.device) -> bool:
    """True on a CUDA device of compute capability >= 8.0 (bf16 and TF32 in hardware)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= BF16_NATIVE_CAPABILITY


def training_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Autocast dtype of a training step: ``auto`` is bf16 where native, fp16 (with the loop's
    GradScaler) on older GPUs, fp32 on the CPU; ``fp16``/``bf16``/``fp32`` are honoured anywhere
    autocast supports them."""
    if precision == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if bf16_native(device) else torch.float16
    return _DTYPES[precision]


def evaluation_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Autocast dtype of evaluation's encoders: ``auto`` is bf16 where native, else fp32 (no
    fp16 without a scaler's range checks: evaluation has none); explicit values honoured."""
    if precision == "auto":
        return torch.bfloat16 if bf16_native(device) else torch.float32
    return _DTYPES[precision]


def apply_tf32(enabled: bool, device: torch.device) -> bool:
    """Set torch's TF32 switches for ``device`` (process-wide: cuBLAS matmuls and cuDNN
    convolutions); returns whether TF32 is now in use. Off (torch's default for matmuls) unless
    ``enabled`` and the device has TF32 tensor cores."""
    use = bool(enabled) and bf16_native(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = use
        torch.backends.cudnn.allow_tf32 = use
    return use
