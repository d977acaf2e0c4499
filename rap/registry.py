"""The datasets, their splits and the fine-tuning tasks: the one list every module reads.

Pure data and tiny lookups; imports nothing of the package (config, the data readers, the
training loop, the report layout and the Snakefile all import it). ``dvc.yaml`` cannot import
Python: its ``foreach`` lists repeat these by hand, and tests/test_registry.py checks them.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Mapping

__all__ = [
    "PRETRAIN_SOURCES",
    "DOWNSTREAM_DATASETS",
    "ALL_DATASETS",
    "SPLITS",
    "TEST_SPLIT",
    "FinetuneTask",
    "FINETUNE",
    "FINETUNE_TASKS",
]

# Pre-training mix (paper 5.2) and the retrieval benchmarks (paper 5.3). The order of
# ALL_DATASETS is part of the embedded corpus: dataset i draws from default_rng((seed, i)).
PRETRAIN_SOURCES = ("webvid", "cc3m")
DOWNSTREAM_DATASETS = ("msrvtt", "didemo", "msvd", "lsmdc")
ALL_DATASETS = PRETRAIN_SOURCES + DOWNSTREAM_DATASETS

# The test split every benchmark is evaluated on (MSRVTT: the 1k-A test of JSFusion).
TEST_SPLIT = "test"
# Splits of each dataset as its publisher (or the usual protocol) defines them. MSRVTT: the 7k
# protocol trains on the 6,513 official-train videos and validates on the 497 official-val ones
# (together JSFusion's 7k list, as the release); the 9k protocol has no validation split.
SPLITS: Mapping[str, tuple[str, ...]] = types.MappingProxyType(
    {
        "webvid": ("train",),
        "cc3m": ("train",),
        "msrvtt": ("train-7k", "val-7k", "train-9k", TEST_SPLIT),
        "didemo": ("train", "val", TEST_SPLIT),
        "msvd": ("train", "val", TEST_SPLIT),
        "lsmdc": ("train", "val", TEST_SPLIT),
    }
)


@dataclass(frozen=True)
class FinetuneTask:
    """A fine-tuning task (paper 5.3): trained on ``dataset``/``train``, its epoch chosen on
    ``val`` (None: no validation split, the last epoch is kept), tested on ``test``."""

    name: str
    dataset: str
    train: str
    val: str | None
    test: str = TEST_SPLIT


# Both MSRVTT tasks are tested on 1k-A; 7k chooses its epoch on the official val videos, 9k has
# no validation split (the paper takes the last of 10 epochs).
FINETUNE: Mapping[str, FinetuneTask] = types.MappingProxyType(
    {
        t.name: t
        for t in (
            FinetuneTask("msrvtt-7k", "msrvtt", "train-7k", "val-7k"),
            FinetuneTask("msrvtt-9k", "msrvtt", "train-9k", None),
            FinetuneTask("didemo", "didemo", "train", "val"),
            FinetuneTask("msvd", "msvd", "train", "val"),
            FinetuneTask("lsmdc", "lsmdc", "train", "val"),
        )
    }
)
FINETUNE_TASKS = tuple(FINETUNE)
