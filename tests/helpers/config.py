"""The test scale: params.yaml's real embedded config shrunk by overrides (never test-only code
paths), and context managers for exact CPU comparisons."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rap import cpu_kernels
from rap.config import load_params

REPO = Path(__file__).resolve().parents[2]
PARAMS_YAML = REPO / "params.yaml"

# The tests' own process pins the CPU kernels as the `rap` command does (params.yaml's
# embedded scale), before anything loads torch: in-process runs and `rap` subprocesses run the
# same kernels, so their bytes can be compared. Imported by tests/conftest.py first.
_CPU = load_params(PARAMS_YAML).cfg.cpu
cpu_kernels.pin(_CPU.kernels, _CPU.threads)
# The datasets the training tests need: the pre-training mix, MSRVTT (no validation split)
# and MSVD (train/val/test); 0.1 of the embedded scale (24 WebVid clips, 16 CC3M images, ...).
CORPUS_DATASETS = ("webvid", "cc3m", "msrvtt", "msvd")
CORPUS_SCALE = 0.1
# Dropout off in both towers, through the config (multi-rank equivalence tests: each rank draws
# its own dropout masks, so a 2-rank run and a 1-process run cannot share them).
NO_DROPOUT = {"model.vision.dropout": 0.0, "model.text.dropout": 0.0}


def shrunk_overrides(root: Path) -> dict[str, Any]:
    """Overrides turning params.yaml's embedded scale into the test scale on the corpus at ``root``."""
    return {
        "data.root": str(root),
        "datasets": list(CORPUS_DATASETS),
        "evaluate.zero_shot": ["msrvtt", "msvd"],
        "finetune.tasks": ["msrvtt-7k", "msrvtt-9k", "msvd"],
        "pretrain.optim.batch_size": 8,
        "pretrain.optim.epochs": 3,
        "pretrain.optim.warmup_steps": 2,
        "pretrain.optim.log_every": 1,
        "finetune.optim.batch_size": 8,
        "finetune.optim.log_every": 1,
        "finetune.epochs": {"msrvtt-7k": 1, "msrvtt-9k": 1, "msvd": 3},
    }


class torch_threads:
    """Run with ``n`` intra-op threads (bit-exact CPU kernels for resume/DDP comparisons, and
    faster on a shared 2-core machine); restores the previous count."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> None:
        import torch

        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.set_num_threads(self.before)
