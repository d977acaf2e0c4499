"""Worker for tests/test_ddp_training.py, run as ``python -m torch.distributed.run --standalone
--nproc_per_node=2 tests/ddp_train_worker.py OVERRIDES_JSON OUT MAX_STEPS``:
the real ``rap.training.pretrain.run`` (DDP, gloo, contrastive candidates gathered from both
ranks) with the test's overrides (dropout off among them: see the test's docstring for why)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rap.config import load_params  # noqa: E402
from rap.training import pretrain  # noqa: E402

from helpers.config import PARAMS_YAML  # noqa: E402


def main() -> None:
    overrides, out, max_steps = json.loads(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)
    pretrain.run(load_params(PARAMS_YAML, overrides), out, max_steps=max_steps)


if __name__ == "__main__":
    main()
