"""The columnar clip index (issue 17): the same clips as the list of objects it replaces, and a
forked worker that reads every clip and collects garbage does not copy it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rap.config import DataConfig
from rap.data.clipindex import Clip, ClipIndex, FloatColumn, StringColumn
from rap.data.datasets import ClipTextDataset, load_clips
from rap.data.records import ClipRecord, IndexEntry, ProbeInfo, index_paths, read_index

from helpers.legacy_index import forked_private_kb


def _clips(n: int) -> list[Clip]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        kind = "image" if i % 3 == 0 else "video"
        caps = tuple(f"caption {i}.{j} é\u4e2d" for j in range(1 + i % 4))
        path = Path(f"/data/raw/{'cc3m' if kind == 'image' else 'webvid'}/d{i % 5}/{i:06d}.{kind[:3]}")
        info = None if i % 7 == 0 else ProbeInfo(int(rng.integers(1, 900)), 30000 / 1001, i / 3, 320 + i, 240)
        store = None if i % 2 else Path(f"/data/frames/x/{i % 11:02x}/{i}-abc.npy")
        out.append(Clip(ClipRecord(f"id{i}", path, caps, ("train", "val")[i % 2], kind), info, store))
    # strings no UTF-8 codec accepts strictly: a surrogate-escaped file name, a lone surrogate
    out.append(Clip(ClipRecord("bad\udcff", Path("/data/raw/x/\udce9t\u00e9.mp4"), ("\ud800 x", ""), "train")))
    out.append(Clip(ClipRecord("rel", Path("no_dir.mp4"), ("c",), "train"), ProbeInfo(0, 0.0, 0.0, 0, 0)))
    return out


def test_columns_give_back_every_clip_exactly():
    clips = _clips(60)
    index = ClipIndex.from_clips(clips)
    assert len(index) == len(clips)
    assert [index[i] for i in range(len(clips))] == clips == list(index)
    assert index[-1] == clips[-1]
    assert index.num_captions().tolist() == [len(c.record.captions) for c in clips]
    assert len(index.path.dirs) == 12  # directories are interned: 2 x 5 + /data/raw/x/ + ''
    with pytest.raises(IndexError, match="outside"):
        index[len(clips)]


def test_ids_from_file_names_and_one_caption_per_clip_take_no_column():
    clips = [
        Clip(ClipRecord(Path(p).stem, Path(p), (f"c{i}",), "train", "image"))
        for i, p in enumerate(["/r/a/0001.jpg", "/r/a/x.y.jpg", "/r/b/.hidden", "/r/b/noext", "rel.mp4"])
    ]
    index = ClipIndex.from_clips(clips)
    assert index.video_id is None and index.cap_offsets is None
    assert list(index) == clips
    other = clips + [Clip(ClipRecord("not-the-stem", Path("/r/a/0002.jpg"), ("a", "b"), "train", "image"))]
    index = ClipIndex.from_clips(other)
    assert index.video_id is not None and index.cap_offsets is not None and list(index) == other


def test_floats_keep_their_bits():
    values = np.array([0.0, -0.0, np.nan, 30000 / 1001, 25.0, 25.0, np.inf, -np.nan])
    for a in (values, np.random.default_rng(0).random(70_000)):  # few distinct: codes; many: raw
        col = FloatColumn.build(a)
        assert (col.codes is None) == (a.size > 65_536)
        got = np.array([col[i] for i in range(a.size)])
        assert got.view(np.uint64).tolist() == a.view(np.uint64).tolist()


def test_string_column_round_trip_and_compact_offsets():
    strings = ["", "a", "\u00e9t\u00e9", "\udc80raw", "x" * 1000]
    col = StringColumn.build(strings)
    assert [col[i] for i in range(len(col))] == strings
    assert col.offsets.dtype == np.uint32 and col.data.dtype == np.uint8


def test_load_clips_from_an_index_equals_the_entries(tmp_path):
    clips = [c for c in _clips(30) if c.info is not None and c.record.captions and c.record.captions[-1]]
    root = tmp_path
    path, _ = index_paths(root, "webvid")
    path.parent.mkdir(parents=True)
    rel = [None if c.store is None else str(c.store.relative_to("/data")) for c in clips]
    entries = [IndexEntry(c.record, c.info, r) for c, r in zip(clips, rel)]
    path.write_text("".join(json.dumps(e.to_json(root)) + "\n" for e in entries))
    for store in (True, False):
        cfg = DataConfig(root=str(root), frame_store=store)
        got = load_clips("webvid", "train", cfg)
        want = [
            Clip(e.record, e.info, root / e.store if (store and e.store) else None)
            for e in read_index(root, "webvid", "train")
        ]
        assert isinstance(got, ClipIndex) and list(got) == want


def test_per_caption_items_as_arrays():
    clips = _clips(10)
    ds = ClipTextDataset(clips, frames=1, sampling="rand", image_size=8, two_views=False, per_caption=True)
    want = [(c, j) for c, clip in enumerate(clips) for j in range(len(clip.record.captions))]
    assert [ds.item(i) for i in range(len(ds))] == want
    one = ClipTextDataset(clips, frames=1, sampling="rand", image_size=8, two_views=False)
    assert [one.item(i) for i in range(len(one))] == [(c, -1) for c in range(len(clips))]


def _forked_private_kb(clips) -> int:
    """Private memory (kB) of a forked child after it read every clip and collected garbage."""
    kb, n = forked_private_kb(lambda: sum(len(clips[i].record.captions) for i in range(len(clips))))
    assert int(n) == sum(len(clips[i].record.captions) for i in range(len(clips)))
    return kb


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux /proc smaps_rollup")
def test_a_forked_worker_does_not_copy_the_index():
    """20k clips: a list of objects is copied into the child (~1 kB per clip: reading writes
    reference counts, gc writes every object's header), the columns are not (the child writes
    only the transient objects of reading, a few MB at most)."""
    index = ClipIndex.from_clips(_clips(20_000))
    nothing = _forked_private_kb([])
    as_columns = _forked_private_kb(index) - nothing
    clips = list(index)
    as_list = _forked_private_kb(clips) - nothing
    print(f"forked child private: list {as_list} kB, columns {as_columns} kB")
    assert as_list > 10_000, f"control: the list of clips cost a forked child only {as_list} kB"
    assert as_columns < 8_000 and as_columns < as_list / 4, (as_columns, as_list)
