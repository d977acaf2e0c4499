"""The authors' released RaP checkpoints in rap: import (:mod:`rap.release.importer`) and the
release's evaluation recipe (:mod:`rap.release.recipe`); and here, the one list of the released
files and where a user places them.

The release (caskcsg/VLP, RaP/README.md, "Download official Checkpoints") publishes five files
at https://huggingface.co/ffgcc/RaP: the pre-trained model and one model fine-tuned per
benchmark (MSRVTT on its 7k training videos; none for the 9k protocol). Its README reports, for
each, the numbers of its own evaluation: exactly the paper's RaP rows of Tables 1-4.

A user places them, under these names, in ``<data.root>/release/`` (``data/release/`` with
params.yaml's ``data.root: data``); ``dvc repro release/dvc.yaml`` (or the Snakemake target
``release``) then imports each one (``rap import-release``) and evaluates it with both
recipes: the pre-trained file zero-shot on every downstream dataset, each fine-tuned file on
its task. :mod:`rap.reports.layout` says where those runs write, and Tables 1-4 show them.
Pure data: imports nothing (the Snakefile, the report layout and the importer read it).
"""

from __future__ import annotations

import types
from typing import Mapping

__all__ = ["RELEASE_URL", "RELEASE_DIR", "PRETRAINED", "RELEASED_FILES", "RELEASED_TASKS", "RECIPES"]

RELEASE_URL = "https://huggingface.co/ffgcc/RaP/resolve/main"
RELEASE_DIR = "release"  # under data.root: where a user places the files
PRETRAINED = "pretrain"  # the name of the pre-trained file's import (runs/release/pretrain)

# import name (``pretrain`` or the fine-tuning task it was fine-tuned on) -> the file's name as
# published. The order is the release README's.
RELEASED_FILES: Mapping[str, str] = types.MappingProxyType(
    {
        PRETRAINED: "rap_pretrain.pth",
        "msrvtt-7k": "rap_msrvtt7k_finetune.pth",
        "didemo": "rap_didemo_finetune.pth",
        "msvd": "rap_msvd_finetune.pth",
        "lsmdc": "rap_lsmdc_finetune.pth",
    }
)
# the fine-tuning tasks a released file was fine-tuned on
RELEASED_TASKS = tuple(name for name in RELEASED_FILES if name != PRETRAINED)
# the evaluation recipes (evaluate.recipe) every released file is evaluated with, in row order:
# the release's own evaluation first (what its numbers came from), then rap's
RECIPES = ("release", "rap")
