"""The paper-scale defaults that follow the release where the paper is silent (DESIGN.md
"Table of record"): the MSRVTT-7k protocol and its size check, exhaustive source mixing, one
MSVD sample per video, per-task augmentation, and momentum encoders for fine-tuning."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rap.checkpoint_io import atomic_save
from rap.config import AugmentConfig, ConfigError, load_params
from rap.data import transforms
from rap.data.adapters import load_records
from rap.data.datasets import Clip, ClipTextDataset
from rap.data.mixing import MixedBatchSampler
from rap.data.randaugment import rand_augment
from rap.data.records import ClipRecord, DataError
from rap.model import RaPModel
from rap.training.finetune import load_pretrained

from helpers.model import model_cfgs


def _release_7k_file(path: Path, first: int, videos: int) -> None:
    """A file in the release's MSRVTT_7k/txt format: 20 JSON lines per video."""
    rows = (
        f'{{"caption": "c {v} {k}", "clip_name": "video{v}", "sen_id": {20 * v + k}}}\n'
        for v in range(first, first + videos)
        for k in range(20)
    )
    path.write_text("".join(rows))


def test_release_7k_files_pass_the_size_check(tmp_path):
    raw = tmp_path / "raw" / "msrvtt"
    raw.mkdir(parents=True)
    _release_7k_file(raw / "train_videodatainfo.json", 0, 6513)
    _release_7k_file(raw / "val_videodatainfo.json", 6513, 497)
    train = load_records("msrvtt", tmp_path, "train-7k", check_sizes=True)
    val = load_records("msrvtt", tmp_path, "val-7k", check_sizes=True)
    assert (len(train), len(val)) == (6513, 497)
    assert not {r.video_id for r in train} & {r.video_id for r in val}
    _release_7k_file(raw / "train_videodatainfo.json", 0, 7010)  # JSFusion's whole 7k list
    with pytest.raises(DataError, match="6,513|6513"):
        load_records("msrvtt", tmp_path, "train-7k", check_sizes=True)


def test_exhaust_mixing_sees_every_sample_once_per_epoch():
    sizes, batch = [10, 23], 3
    sampler = MixedBatchSampler(sizes, [0.5, 0.5], batch, seed=4, mixing="exhaust")
    assert len(sampler) == 10 == 10 // 3 + 23 // 3
    for epoch in (0, 1):
        sampler.set_position(epoch)
        seen = [(s, i) for b in sampler for s, i, _ in b]
        for s, n in enumerate(sizes):
            items = [i for src, i in seen if src == s]
            assert len(items) == len(set(items)) == n // batch * batch  # once each, last partial batch dropped
    # the release's MetaLoader: uniform among the sources not yet exhausted, so once the small
    # source is done only the large one is left
    sched = sampler.schedule(0)
    last_small = max(np.flatnonzero(sched == 0))
    assert (sched[last_small + 1 :] == 1).all() and last_small < len(sched) - 1
    with pytest.raises(ValueError, match="mixing"):
        MixedBatchSampler(sizes, [1, 1], batch, seed=0, mixing="round-robin")


def test_one_caption_per_video_makes_one_item_per_clip():
    clips = [Clip(ClipRecord(f"v{i}", Path(f"v{i}.avi"), ("a", "b", "c"), "train")) for i in range(4)]
    kw = dict(frames=2, sampling="rand", image_size=8, two_views=False)
    assert len(ClipTextDataset(clips, per_caption=True, **kw)) == 12
    assert len(ClipTextDataset(clips, per_caption=False, **kw)) == 4
    p = load_params("params.yaml", {"scale": "paper"})
    assert p.cfg.finetune.one_caption_per_video == ("msvd",)
    with pytest.raises(ConfigError, match="one_caption_per_video"):
        load_params("params.yaml", {"finetune.one_caption_per_video": ["msrvtt"]})


def test_augmentation_views():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 48, 80, 3), dtype=np.uint8)  # wide frames
    squash = transforms.train_view(frames, 32, np.random.default_rng(1), view="squash")
    whole = transforms._resize_box(frames, (0, 0, 80, 48), (32, 32))
    assert torch.equal(squash, transforms.to_tensor(whole))
    centre = transforms.train_view(frames, 32, np.random.default_rng(1), view="centre")
    assert torch.equal(centre, transforms.eval_view(frames, 32))
    areas = [
        (lambda t, l, h, w: h * w / (48 * 80))(
            *transforms.crop_params(48, 80, np.random.default_rng(s), scale=(0.2, 1.0))
        )
        for s in range(200)
    ]
    assert min(areas) < 0.3 and max(areas) <= 1.0  # (0.2, 1): far smaller crops than (0.5, 1)
    assert transforms.train_view(frames, 32, rng, view="squash_crop", crop_scale=(0.2, 1.0)).shape == (2, 3, 32, 32)
    with pytest.raises(ConfigError, match="crop_scale"):
        AugmentConfig(crop_scale=(0.0, 1.0))


def test_randaugment_is_one_draw_per_clip_and_seeded():
    static = np.repeat(np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8), 4, axis=0)
    outs = [rand_augment(static, np.random.default_rng(s)) for s in range(20)]
    assert all((o == o[0]).all() for o in outs)  # the K frames of a CC3M image stay identical
    assert sum(not np.array_equal(o, static) for o in outs) >= 5  # some ops change the pixels
    assert np.array_equal(rand_augment(static, np.random.default_rng(3)), outs[3])


def test_finetuning_momentum_starts_from_the_pretrained_towers(tmp_path):
    model_cfg, pre_loss = model_cfgs()  # embedded pre-training: no momentum queue
    torch.manual_seed(0)
    pre = RaPModel(model_cfg, pre_loss)
    ckpt = atomic_save({"model": pre.state_dict()}, tmp_path / "pre.pt")
    paper = load_params("params.yaml", {"scale": "paper"}).cfg.finetune.loss
    ft_loss = dataclasses.replace(pre_loss, **{f: getattr(paper, f) for f in ("momentum", "intra_queue")})
    torch.manual_seed(1)
    ft = RaPModel(model_cfg, dataclasses.replace(ft_loss, queue_size=4))
    load_pretrained(ft, ckpt, pre_loss)
    for name, p in ft.momentum.named_parameters():
        assert torch.equal(p, dict(pre.named_parameters())[name]), name
    assert int(ft.momentum.filled) == 0


def test_download_limit_keeps_a_7k_validation_split(tmp_path):
    from rap.data.download import limit_annotations

    raw = tmp_path / "raw" / "msrvtt"
    raw.mkdir(parents=True)
    official = ["train"] * 5 + ["validate"] * 2 + ["test"]
    videos = [{"video_id": f"video{i}", "split": s} for i, s in enumerate(official)]
    sents = [{"video_id": f"video{i}", "caption": f"c {i}"} for i in range(8)]
    (raw / "MSRVTT_data.json").write_text(json.dumps({"videos": videos, "sentences": sents}))
    (raw / "MSRVTT_train.7k.csv").write_text("video_id\n" + "".join(f"video{i}\n" for i in range(7)))
    limit_annotations("msrvtt", raw, 2)
    assert [r.video_id for r in load_records("msrvtt", tmp_path, "train-7k")] == ["video0", "video1"]
    assert [r.video_id for r in load_records("msrvtt", tmp_path, "val-7k")] == ["video5", "video6"]
