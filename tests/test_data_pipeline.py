"""Synthetic corpus -> adapters -> extract -> loaders, and bad input (skipped, counted, bounded)."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from rap.config import DataConfig, ScaleConfig, TextConfig
from rap.data import decode, store, synthetic
from rap.data.adapters import SPLITS, load_records
from rap.data.datasets import BLANK_PIXEL, build_eval_set, build_finetune_loader, build_pretrain_loader
from rap.data.decode import probe, read_frames
from rap.data.extract import extract
from rap.data.manifest import read_manifest, write_manifest
from rap.data.records import DataError, read_index
from rap.model.tokenizer import build_tokenizer

SCALE = 0.05  # 4-12 clips per split


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(TextConfig(name="tiny", pretrained=False, tokenizer="builtin"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for d in ("webvid", "cc3m", "msrvtt", "didemo", "msvd", "lsmdc"):
        synthetic.generate(d, root / "raw" / d, seed=0, scale=SCALE)
    return root


def _cfg(root, **data) -> ScaleConfig:
    base = dict(
        root=str(root),
        source="synthetic",
        image_size=32,
        frames_eval=8,
        num_workers=0,
        store_fps=8.0,
        max_bad_fraction=0.05,
    )
    base.update(data)
    s = ScaleConfig()
    return dataclasses.replace(
        s, data=DataConfig(**base), pretrain=dataclasses.replace(s.pretrain, source_weights=(0.5, 0.5))
    )


def test_synthetic_corpus_is_read_by_the_adapters(corpus):
    for d, splits in SPLITS.items():
        for split in splits:
            recs = load_records(d, corpus, split)
            assert len(recs) >= 4, (d, split)
            assert all(r.path.is_file() and r.captions and all(c.strip() for c in r.captions) for r in recs)
    info = probe(load_records("lsmdc", corpus, "test")[0].path)  # .avi clips
    assert 16 <= info.num_frames <= 32 and (info.width, info.height) == (112, 64)
    assert all(r.kind == "image" for r in load_records("cc3m", corpus, "train"))
    msvd = load_records("msvd", corpus, "train")
    assert min(len(r.captions) for r in msvd) >= 8  # many captions per video
    didemo = load_records("didemo", corpus, "test")
    assert all(2 <= r.captions[0].count(".") <= 4 for r in didemo)  # 2-4 sentence paragraphs


def test_synthetic_is_deterministic_and_captions_match_pixels(tmp_path):
    a = synthetic.generate("msrvtt", tmp_path / "a", seed=3, scale=0.03)
    b = synthetic.generate("msrvtt", tmp_path / "b", seed=3, scale=0.03)
    assert a == b
    assert (tmp_path / "a" / "MSRVTT_data.json").read_bytes() == (tmp_path / "b" / "MSRVTT_data.json").read_bytes()
    assert synthetic.generate("msrvtt", tmp_path / "a", seed=3, scale=0.03)["skipped"]
    # the caption's colour is the dominant colour of the decoded pixels (learnable from pixels)
    rng = np.random.default_rng(0)
    spec = synthetic._specs(rng, 1, unique=True, size=(64, 64), change_p=0.0, second_p=0.0)[0]
    synthetic.write_video(tmp_path / "c.mp4", synthetic.render(spec))
    frames = read_frames(tmp_path / "c.mp4", [0, spec.frames - 1]).astype(float)
    share = {
        c: (np.linalg.norm(frames - np.array(rgb, float), axis=-1) < 40).mean() for c, rgb in synthetic.COLOURS.items()
    }
    assert max(share, key=share.get) == spec.colour and share[spec.colour] > 0.02


def test_pyav_fallback_matches_decord(corpus, monkeypatch):
    path = load_records("msvd", corpus, "val")[0].path
    ref_info, ref = probe(path), read_frames(path, [0, 5, 5, 9], 32)
    monkeypatch.setattr(decode, "decord", None)
    info = probe(path)
    frames = read_frames(path, [0, 5, 5, 9], 32)
    assert info.num_frames == ref_info.num_frames and (info.width, info.height) == (ref_info.width, ref_info.height)
    assert frames.shape == ref.shape == (4, 32, 40, 3)
    assert np.abs(frames.astype(int) - ref.astype(int)).mean() < 12  # same frames, different scalers
    with pytest.raises(decode.DecodeError, match="not decodable"):
        read_frames(path, [info.num_frames + 3])


def test_test_splits_have_distinct_main_objects():
    rng = np.random.default_rng(0)
    specs = synthetic._specs(rng, 40, unique=True, size=(64, 64))
    assert len({(s.colour, s.shape, s.motion) for s in specs}) == 40
    assert len({(s.colour, s.shape) for s in specs}) == 36  # all colour+shape pairs used first


def test_extract_writes_index_and_store_then_loaders(corpus, tokenizer):
    cfg = _cfg(corpus)
    for d in ("webvid", "cc3m", "msrvtt", "msvd"):
        s = extract(d, cfg.data)
        assert s["bad"] == 0 and s["usable"] == s["records"]
    idx = read_index(corpus, "msrvtt", "test")
    assert idx and all(e.store and (corpus / store.store_file(e.store)).is_file() for e in idx)
    assert re.fullmatch(r"frames/msrvtt/.+-jpeg90-wds/\d{6}-\w{10}\.tar#\d+,\d+", idx[0].store)  # the default: wds
    arr = np.asarray(store.read_clip(corpus / idx[0].store))
    assert arr.dtype == np.uint8 and min(arr.shape[1:3]) == 32 and arr.shape[0] == idx[0].info.num_frames

    pre = build_pretrain_loader(cfg, tokenizer, seed=0, batch_size=2)
    batches = list(pre)
    assert len(batches) == pre.steps_per_epoch == 10 and pre.position == (1, 0)
    b = batches[0]
    assert b["video"].shape == (2, 4, 3, 32, 32) and b["video_aug"].shape == b["video"].shape
    assert b["input_ids"].shape == b["attention_mask"].shape and b["input_ids"].shape[1] <= 30
    assert (b["input_ids"][:, 0] == tokenizer.cls_token_id).all()
    assert b["video"].dtype == b["video_aug"].dtype == torch.uint8 and b["video_index"].dtype == torch.long
    assert {x["source"] for x in batches} == {"webvid", "cc3m"} and all(x["n_skipped"] == 0 for x in batches)
    assert not torch.equal(b["video"], b["video_aug"])  # independent augmentations
    cc = next(x for x in batches if x["source"] == "cc3m")
    assert torch.equal(cc["video"][:, 0], cc["video"][:, 3])  # an image is a static clip

    ft = build_finetune_loader("msvd", cfg, tokenizer, seed=0, batch_size=6)
    n_caps = sum(len(r.captions) for r in load_records("msvd", corpus, "train"))
    assert ft.steps_per_epoch == n_caps // 6  # one item per caption
    fb = next(iter(ft))
    assert fb["video"].shape == (6, 4, 3, 32, 32) and "video_aug" not in fb and fb["video"].dtype == torch.uint8

    ev = build_eval_set("msvd", "test", cfg)
    assert len(ev.texts) > len(ev.videos) and len(ev.text_to_video) == len(ev.texts)
    assert all(ev.text_to_video[t] == v for v, ts in enumerate(ev.video_to_texts) for t in ts)
    vb = next(ev.iter_videos(batch_size=3))
    assert vb["video"].shape == (3, 8, 3, 32, 32) and vb["video"].dtype == torch.uint8
    assert torch.equal(vb["video"], next(ev.iter_videos(batch_size=3))["video"])  # uniform: deterministic
    tok = ev.tokenize(tokenizer, 64)
    assert tok["input_ids"].shape[0] == len(ev.texts)


def test_loader_decodes_on_the_fly_without_store(corpus, tokenizer):
    cfg = _cfg(corpus, frame_store=False)
    ev = build_eval_set("didemo", "test", cfg)  # no index for didemo: raw annotation, decoding
    assert len(ev.texts) == len(ev.videos)  # one paragraph per video
    b = next(ev.iter_videos(batch_size=2))
    assert b["video"].shape == (2, 8, 3, 32, 32) and not any(b["failed"])
    ft = build_finetune_loader("lsmdc", cfg, tokenizer, seed=1, batch_size=3)
    assert next(iter(ft))["video"].shape == (3, 4, 3, 32, 32)


@pytest.fixture()
def damaged(tmp_path):
    """A small WebVid + CC3M with 5 broken WebVid items and 1 garbage image."""
    root = tmp_path / "data"
    synthetic.generate("webvid", root / "raw" / "webvid", seed=1, scale=0.05)  # 12 clips
    synthetic.generate("cc3m", root / "raw" / "cc3m", seed=1, scale=0.05)  # 8 images
    recs = load_records("webvid", root, "train")
    recs[0].path.write_bytes(b"")  # zero-byte
    data = recs[1].path.read_bytes()
    recs[1].path.write_bytes(data[: len(data) // 2])  # truncated mp4 (moov atom lost)
    recs[2].path.write_bytes(np.random.default_rng(0).bytes(5000))  # garbage
    recs[3].path.unlink()  # missing
    csv_path = root / "raw" / "webvid" / "results_2M_train.csv"
    raw = csv_path.read_bytes().replace(recs[4].captions[0].encode(), b"caf\xe9 \xff broken")
    csv_path.write_bytes(raw)  # non-UTF-8 caption...
    entries = read_manifest(root, "webvid")  # ...as the manifest, extraction's input, carries it
    entries[4] = dataclasses.replace(entries[4], caption=load_records("webvid", root, "train")[4].captions[0])
    write_manifest(root, "webvid", entries)
    imgs = load_records("cc3m", root, "train")
    imgs[0].path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root, [r.path for r in recs[:5]], imgs[0].path


def test_extract_lists_unusable_clips_with_reasons(damaged):
    root, bad_paths, bad_img = damaged
    s = extract("webvid", _cfg(root, max_bad_fraction=0.5).data)
    assert s["bad"] == 5 and s["usable"] == 7
    bad = [json.loads(line) for line in (root / "index" / "webvid.bad.jsonl").read_text().splitlines()]
    reasons = {b["path"]: b["reason"] for b in bad}
    assert set(reasons) == {str(p) for p in bad_paths}
    assert "zero-byte" in reasons[str(bad_paths[0])] and "not found" in reasons[str(bad_paths[3])]
    assert "unreadable video" in reasons[str(bad_paths[1])] and "no usable caption" in reasons[str(bad_paths[4])]
    s = extract("cc3m", _cfg(root, max_bad_fraction=0.5).data)
    assert s["bad"] == 1 and "unreadable image" in json.loads((root / "index" / "cc3m.bad.jsonl").read_text())["reason"]


def test_extract_stops_past_max_bad_fraction(damaged):
    root, _, _ = damaged
    with pytest.raises(DataError, match=r"webvid: 5/12 clips unusable .*max_bad_fraction=5.0%.*webvid.bad.jsonl"):
        extract("webvid", _cfg(root, max_bad_fraction=0.05).data)
    assert (root / "index" / "webvid.bad.jsonl").is_file() and not (root / "index" / "webvid.jsonl").exists()


def test_loader_skips_and_counts_bad_files_without_crashing(damaged, tokenizer, caplog):
    root, bad_paths, _ = damaged
    cfg = _cfg(root, frame_store=False, max_bad_fraction=1.0)  # no index: every bad file is met live
    loader = build_pretrain_loader(cfg, tokenizer, seed=0, batch_size=4)
    batches = list(loader)
    assert all(b["video"].shape[0] == 4 for b in batches)  # bad items replaced, batch size kept
    skipped = [f for b in batches for f in b["skipped_files"]]
    assert sum(b["n_skipped"] for b in batches) == len(skipped) > 0
    assert all(any(str(p) in f for p in bad_paths[:4]) or "jpg" in f for f in skipped)
    assert "skipping" in caplog.text
    assert loader.position == (1, 0)


def test_loader_errors_past_max_bad_fraction(damaged, tokenizer):
    root, _, _ = damaged
    loader = build_pretrain_loader(
        _cfg(root, frame_store=False, max_bad_fraction=0.01), tokenizer, seed=0, batch_size=4
    )
    with pytest.raises(DataError, match=r"unusable samples this epoch, more than data.max_bad_fraction=0.01"):
        for _ in loader:
            pass


def test_eval_set_counts_failed_videos(damaged):
    root, _, _ = damaged
    # a hand-made index pointing at a video deleted after extraction: eval ranks it blank
    extract("webvid", _cfg(root, max_bad_fraction=0.5, frame_store=False).data)
    first = read_index(root, "webvid")[0]
    first.record.path.unlink()
    ev = build_eval_set("webvid", "train", _cfg(root, frame_store=False, max_bad_fraction=0.2))
    out = list(ev.iter_videos(batch_size=4))
    assert sum(b["video"].shape[0] for b in out) == len(ev.videos) and len(ev.failed) == 1
    blank = out[0]["video"][0]  # the first video is the deleted one: the mean colour, uint8
    assert blank.dtype == torch.uint8 and torch.equal(blank[:, :, 0, 0], torch.tensor([BLANK_PIXEL] * 8).to(blank))
    ev = build_eval_set("webvid", "train", _cfg(root, frame_store=False, max_bad_fraction=0.0))
    with pytest.raises(DataError, match="evaluation videos unusable"):
        list(ev.iter_videos(batch_size=4))


def test_loader_resumes_from_a_data_position(corpus, tokenizer):
    cfg = _cfg(corpus)
    extract("webvid", cfg.data)
    extract("cc3m", cfg.data)
    ref = build_pretrain_loader(cfg, tokenizer, seed=3, batch_size=4)
    ref.set_epoch(1)
    full = list(ref)
    resumed = build_pretrain_loader(cfg, tokenizer, seed=3, batch_size=4)
    resumed.set_position(1, 2)
    assert len(resumed) == len(full) - 2
    again = list(resumed)
    for a, b in zip(full[2:], again):
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["video_aug"], b["video_aug"])
        assert torch.equal(a["input_ids"], b["input_ids"]) and a["source"] == b["source"]
    other = build_pretrain_loader(cfg, tokenizer, seed=3, batch_size=4, rank=1, world_size=2)
    other.set_epoch(1)
    assert [b["source"] for b in other] == [b["source"] for b in full][: other.steps_per_epoch]


def _same_batches(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x["video"], y["video"]) and torch.equal(x["video_aug"], y["video_aug"])
        assert torch.equal(x["input_ids"], y["input_ids"]) and x["source"] == y["source"]


def test_one_loader_per_run_with_persistent_workers(corpus, tokenizer):
    """TrainLoader builds ONE DataLoader for the whole run: with a real worker it is the same
    object and the same (persistent) worker process every epoch, and its batches - uint8 -
    equal those of the in-process loader, epoch by epoch and after a mid-epoch seek.
    Iterating never draws from the global torch RNG (the training's stream)."""
    cfg = _cfg(corpus)
    extract("webvid", cfg.data)
    extract("cc3m", cfg.data)
    ref = build_pretrain_loader(cfg, tokenizer, seed=5, batch_size=4)
    work = build_pretrain_loader(
        dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, num_workers=1)), tokenizer, seed=5, batch_size=4
    )
    try:
        first = work.loader
        assert first.persistent_workers and first.num_workers == 1 and first.prefetch_factor == 2
        assert first.pin_memory == torch.cuda.is_available()
        assert not ref.loader.persistent_workers and ref.loader.prefetch_factor is None
        torch.manual_seed(123)
        rng_before = torch.get_rng_state()
        pids = []
        for epoch in range(2):
            expected = list(ref)
            got = list(work)
            assert work.loader is first and work.position == (epoch + 1, 0)
            pids.append([w.pid for w in first._iterator._workers])
            assert all(w.is_alive() for w in first._iterator._workers)  # persisted past the epoch
            _same_batches(got, expected)
            assert got[0]["video"].dtype == torch.uint8
        assert pids[0] == pids[1]  # the same worker process served both epochs
        work.set_position(1, 3)  # mid-epoch resume on the same loader and workers
        ref.set_position(1, 3)
        _same_batches(list(work), list(ref))
        assert work.loader is first and [w.pid for w in first._iterator._workers] == pids[0]
        assert torch.equal(torch.get_rng_state(), rng_before)
    finally:
        work.close()
    assert work._loader is None and not any(w.is_alive() for w in first._iterator._workers)
