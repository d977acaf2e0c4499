"""Frame store formats (rap/data/store.py): npy and JPEG round trips, lazy decoding, torn and
corrupt files, and extract -> loaders end to end with the JPEG store."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from rap.config import ConfigError, DataConfig, ScaleConfig, TextConfig
from rap.data import store, synthetic
from rap.data.datasets import build_eval_set, build_finetune_loader
from rap.data.extract import extract
from rap.data.manifest import digest_file
from rap.data.records import read_index
from rap.model.tokenizer import build_tokenizer
from rap.model.video import normalize_frames


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """A real synthetic clip (smooth shapes on a background, like the corpus): 22 frames 64x80."""
    spec = synthetic._specs(np.random.default_rng(0), 1, unique=True, size=(80, 64))[0]
    return synthetic.render(spec)


@pytest.fixture
def count_decodes(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = store._decode_jpeg

    def counting(data: bytes) -> np.ndarray:
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(store, "_decode_jpeg", counting)
    return calls


def test_npy_round_trip_is_exact(tmp_path, frames):
    p = tmp_path / "c.npy"
    assert store.write_clip(p, frames) == p.stat().st_size
    arr = store.read_clip(p)
    assert isinstance(arr, np.memmap) and np.array_equal(arr, frames)
    assert store.is_complete(p)


def test_jpeg_round_trip_and_indexing_like_the_array(tmp_path, frames):
    p = tmp_path / "c.jpgs"
    nbytes = store.write_clip(p, frames, quality=90)
    clip = store.read_clip(p)
    assert isinstance(clip, store.JpegClip) and store.is_complete(p)
    assert len(clip) == clip.shape[0] == len(frames) and clip.shape == frames.shape and clip.dtype == np.uint8
    full = np.asarray(clip)
    assert full.shape == frames.shape and full.dtype == np.uint8
    # JPEG q90 on the corpus' pixel-noise texture: ~5 grey levels mean error (PSNR ~31 dB)
    assert np.abs(full.astype(int) - frames.astype(int)).mean() < 8
    idx = [0, 5, 5, 21]  # sample_indices may repeat a frame
    assert np.array_equal(clip[idx], full[idx]) and np.array_equal(clip[np.array(idx)], full[idx])
    assert np.array_equal(clip[3], full[3]) and np.array_equal(clip[-1], full[-1])
    assert np.array_equal(clip[2:6], full[2:6])
    with pytest.raises(IndexError, match="c.jpgs"):
        clip[[len(frames)]]
    # size: ~8x smaller than raw even at 64x80 (headers dominate less at 256 px: bench_loader.py)
    assert nbytes < frames.nbytes / 5
    assert store.write_clip(tmp_path / "q30.jpgs", frames, quality=30) < nbytes  # quality is used


def test_jpeg_decodes_only_the_requested_frames(tmp_path, frames, count_decodes):
    p = tmp_path / "c.jpgs"
    store.write_clip(p, frames)
    assert store.is_complete(p) and not count_decodes  # validation never decodes
    clip = store.read_clip(p)
    assert not count_decodes
    out = clip[[1, 1, 7, 20]]
    assert out.shape == (4, *frames.shape[1:]) and len(count_decodes) == 3  # each distinct frame once
    offsets = clip.offsets.astype(int)
    assert sorted(count_decodes) == sorted(int(offsets[i + 1] - offsets[i]) for i in (1, 7, 20))


def test_torn_and_corrupt_files_are_detected(tmp_path, frames):
    good = tmp_path / "good.jpgs"
    store.write_clip(good, frames)
    data = good.read_bytes()
    clip = store.read_clip(good)
    a, b = int(clip.offsets[1]), int(clip.offsets[2])  # frame 1's bytes

    def variant(name: str, content: bytes):
        p = tmp_path / f"{name}.jpgs"
        p.write_bytes(content)
        return p

    for name, content in [
        ("truncated", data[:-10]),
        ("empty", b""),
        ("header-only", data[:20]),
        ("bad-magic", b"XXXXXXXX" + data[8:]),
        ("extra-bytes", data + b"\0"),
        ("bad-eoi", data[: b - 2] + b"\0\0" + data[b:]),
    ]:
        p = variant(name, content)
        assert not store.is_complete(p), name
    for name in ("truncated", "empty", "bad-magic"):
        with pytest.raises(ValueError, match=f"{name}.jpgs"):
            store.read_clip(tmp_path / f"{name}.jpgs")
    # a frame whose JPEG data is destroyed (markers intact): structurally complete, but reading
    # that frame names the file and frame; the other frames still read
    p = variant("bad-frame", data[:a] + b"\xff\xd8" + bytes(b - a - 4) + b"\xff\xd9" + data[b:])
    assert store.is_complete(p)
    bad = store.read_clip(p)
    assert np.array_equal(bad[[0, 2]], clip[[0, 2]])
    with pytest.raises(ValueError, match=r"bad-frame.jpgs: frame 1 does not decode"):
        bad[[0, 1]]
    npy = tmp_path / "c.npy"
    store.write_clip(npy, frames)
    npy.write_bytes(npy.read_bytes()[:-100])
    assert not store.is_complete(npy) and not store.is_complete(tmp_path / "missing.npy")
    with pytest.raises(ValueError, match="suffix"):
        store.read_clip(tmp_path / "c.png")
    with pytest.raises(ValueError, match="uint8"):
        store.write_clip(tmp_path / "x.jpgs", frames.astype(np.float32))


def test_store_paths_are_keyed_by_format_and_quality_and_config_checks(tmp_path):
    args = ("webvid", tmp_path / "v.mp4", "v1", 256, 2.0)
    npy = store.store_relpath(*args, fmt="npy", quality=90)
    jpg = store.store_relpath(*args, fmt="jpeg", quality=90)
    assert npy.startswith("frames/webvid/256px-2fps/") and npy.endswith(".npy")  # npy layout unchanged
    assert jpg.startswith("frames/webvid/256px-2fps-jpeg90/") and jpg.endswith(".jpgs")
    assert store.store_relpath(*args, fmt="npy", quality=50) == npy  # quality does not apply to npy
    assert store.store_relpath(*args, fmt="jpeg", quality=80) != jpg
    with pytest.raises(ValueError, match="png"):
        store.store_relpath(*args, fmt="png", quality=90)
    # a clip replaced at the same path (a regenerated corpus) gets a store file of its own
    (tmp_path / "v.mp4").write_bytes(b"first clip")
    first = store.store_relpath(*args, fmt="npy", quality=90, source_digest=digest_file(tmp_path / "v.mp4"))
    (tmp_path / "v.mp4").write_bytes(b"second clip")
    second = store.store_relpath(*args, fmt="npy", quality=90, source_digest=digest_file(tmp_path / "v.mp4"))
    assert first != second and first != npy and first.rsplit("/", 1)[0] == npy.rsplit("/", 1)[0]
    assert DataConfig().store_format == "wds"  # the paper-scale default: JPEG clips in tar shards
    with pytest.raises(ConfigError, match="store_jpeg_quality"):
        DataConfig(store_jpeg_quality=0)
    with pytest.raises(ConfigError, match="store_format"):
        DataConfig(store_format="png")


def test_extract_and_loaders_with_the_jpeg_store(tmp_path, caplog):
    root = tmp_path / "data"
    synthetic.generate("msrvtt", root / "raw" / "msrvtt", seed=0, scale=0.05)
    tok = build_tokenizer(TextConfig(name="tiny", pretrained=False, tokenizer="builtin"))

    def cfg(fmt: str) -> ScaleConfig:
        data = DataConfig(
            root=str(root),
            source="synthetic",
            image_size=64,
            frames_eval=8,
            num_workers=0,
            store_fps=8.0,
            max_bad_fraction=0.5,
            store_format=fmt,
        )
        return dataclasses.replace(ScaleConfig(), data=data)

    sizes, videos = {}, {}
    for fmt in ("npy", "jpeg"):
        s = extract("msrvtt", cfg(fmt).data)
        assert s["bad"] == 0 and s["store_format"] == fmt
        sizes[fmt] = sum(f.stat().st_size for f in (root / "frames" / "msrvtt").rglob(f"*{store.FORMATS[fmt]}"))
        videos[fmt] = torch.cat([b["video"] for b in build_eval_set("msrvtt", "test", cfg(fmt)).iter_videos(4)])
    assert all(e.store.endswith(".jpgs") for e in read_index(root, "msrvtt"))  # the index follows the format
    assert sizes["jpeg"] < sizes["npy"] / 5  # measured ~8x at 64 px
    assert videos["jpeg"].shape == videos["npy"].shape
    jpeg, npy = normalize_frames(videos["jpeg"]), normalize_frames(videos["npy"])  # as the model sees them
    assert (jpeg - npy).abs().mean() < 0.1  # same frames (~0.06: JPEG loss)

    # a torn file is re-extracted; a destroyed one fails at training time, named and counted
    files = sorted((root / "frames" / "msrvtt").rglob("*.jpgs"))
    files[0].write_bytes(files[0].read_bytes()[:-5])
    s = extract("msrvtt", cfg("jpeg").data)
    assert store.is_complete(files[0]) and 0 < s["store_bytes_written"] < sizes["jpeg"]
    train = {(root / e.store) for e in read_index(root, "msrvtt", "train-9k")}
    victim = sorted(train)[0]
    data = victim.read_bytes()
    clip = store.read_clip(victim)
    start = int(clip.offsets[0])  # destroy every frame's JPEG data, keep the layout
    victim.write_bytes(data[:start] + bytes(len(data) - start))
    loader = build_finetune_loader("msrvtt-9k", cfg("jpeg"), tok, seed=0, batch_size=4)
    batches = list(loader)
    assert sum(b["n_skipped"] for b in batches) >= 1
    assert any(victim.name in f and "does not decode" in f for b in batches for f in b["skipped_files"])
    assert all(b["video"].shape == (4, 4, 3, 64, 64) for b in batches)
