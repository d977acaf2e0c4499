"""`rap import`: the three layouts a lab may already hold, handed over without copying, into the
same manifest `rap download` writes; extraction reads imported webdataset shards in place."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from rap.config import DataConfig
from rap.data import synthetic
from rap.data.adapters import load_records
from rap.data.extract import extract
from rap.data.importer import import_copy
from rap.data.manifest import local_file, manifest_records, read_manifest
from rap.data.records import DataError


def _cfg(root):
    return DataConfig(root=str(root), source="public", image_size=32, store_format="npy", num_workers=0)


def test_import_webvid_release_layout_without_copying(tmp_path):
    release = tmp_path / "release"  # videos/{page_dir}/{videoid}.mp4 + results_2M_train.csv
    synthetic.generate("webvid", release, seed=0, scale=0.05)
    missing = next((release / "videos").rglob("*.mp4"))
    missing.unlink()  # one the lab never got
    root = tmp_path / "data"
    s = import_copy("webvid", release, _cfg(root))
    entries = read_manifest(root, "webvid")
    assert s["items"] == len(entries) == 11 and "release" in s["layout"]
    assert all(e.path.startswith(str(release)) for e in entries)  # pointed at, not copied
    assert not (root / "raw").exists()
    recs = manifest_records(root, "webvid", "train")
    assert [r.path for r in recs] == [release / e.path for e in entries] and all(r.captions[0] for r in recs)


def test_import_webdataset_shards_and_extract_from_them(tmp_path):
    src = tmp_path / "gen"
    synthetic.generate("cc3m", src, seed=0, scale=0.05)
    images = json.loads((src / "cc3m_train.json").read_text())
    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "00000.tar", "w") as tar:  # img2dataset's webdataset output
        for i, item in enumerate(images):
            for ext, data in (
                (".jpg", (src / item["image"]).read_bytes()),
                (".txt", item["caption"].encode()),
                (".json", json.dumps({"key": f"{i:09d}", "status": "success"}).encode()),
            ):
                info = tarfile.TarInfo(f"{i:09d}{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    root = tmp_path / "data"
    s = import_copy("cc3m", shards, _cfg(root))
    entries = read_manifest(root, "cc3m")
    assert s["items"] == len(images) and all(e.member and e.member.endswith(".jpg") for e in entries)
    assert [e.caption for e in entries] == [it["caption"] for it in images]
    with local_file(manifest_records(root, "cc3m", "train")[0].path) as f:  # <tar>::<member>
        assert f.read_bytes() == (src / images[0]["image"]).read_bytes()
    summary = extract("cc3m", _cfg(root))
    assert summary["usable"] == len(images) and summary["bad"] == 0


def test_import_didemo_placed_by_hand_links_and_counts(tmp_path):
    hand = tmp_path / "didemo"
    synthetic.generate("didemo", hand, seed=0, scale=0.05)
    videos = sorted((hand / "videos").iterdir())
    videos[0].unlink()  # the one the release could not use either
    root = tmp_path / "data"
    s = import_copy("didemo", hand, _cfg(root))
    assert (root / "raw" / "didemo").is_symlink()
    assert s["items"] == len(videos) - 1 and "1 absent" in s["layout"]
    assert len(manifest_records(root, "didemo", "test")) < len(load_records("didemo", root, "test"))
    (root / "raw" / "msvd").mkdir(parents=True)
    (root / "raw" / "msvd" / "keep.txt").write_text("a user's file")
    with pytest.raises(DataError, match="already holds files"):  # never replaced under a user
        import_copy("msvd", hand, _cfg(root))
    assert (root / "raw" / "msvd" / "keep.txt").read_text() == "a user's file"
