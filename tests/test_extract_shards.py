"""`rap extract` in parallel and in shards (issue 17): the index is byte-identical whatever the
process and shard counts; a killed sharded extraction resumes without redoing finished shards
or re-probing finished items; bad media inside a shard is skipped and counted."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from rap import run_lock
from rap.cli import main
from rap.config import DataConfig
from rap.data import synthetic
from rap.data.extract import extract, extract_shard, items_of, merge, shard_items
from rap.data.manifest import manifest_records, read_manifest, write_manifest
from rap.data.records import DataError, index_paths, read_index, shard_index_path

DATASET = "webvid"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """12 WebVid clips, the 6th truncated after the download recorded it (a corrupt file)."""
    root = tmp_path_factory.mktemp("extract-src")
    synthetic.generate(DATASET, root / "raw" / DATASET, seed=2, scale=0.05)
    victim = manifest_records(root, DATASET, "train")[5].path
    victim.write_bytes(victim.read_bytes()[:300])
    return root


def _copy(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest, symlinks=True)
    return dest


def _cfg(root: Path, **kw) -> DataConfig:
    base = dict(root=str(root), source="synthetic", image_size=32, store_fps=8.0, store_format="npy", num_workers=0)
    return DataConfig(**{**base, "max_bad_fraction": 0.5, **kw})


def _outputs(root: Path) -> dict[str, bytes]:
    """Index, bad list, ground truth and every store file (one per clip, or tar shards), by path
    under the root."""
    index, bad = index_paths(root, DATASET)
    stored = sorted(p for p in (root / "frames").rglob("*") if p.is_file())
    files = [index, bad, root / "index" / f"{DATASET}.truth.jsonl", *stored]
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def _check_store_digests(root: Path) -> None:
    """The index pins each clip's stored bytes (its file, or its member's span in a tar)."""
    for e in read_index(root, DATASET):
        m = re.fullmatch(r"(.+)#(\d+),(\d+)", e.store)
        data = (root / e.store).read_bytes() if m is None else (root / m[1]).read_bytes()[int(m[2]) :][: int(m[3])]
        assert e.store_sha256 == hashlib.sha256(data).hexdigest(), e.store


def _clear(root: Path) -> None:
    """Extraction's outputs moved out of the way (kept beside the root), so a rerun starts afresh."""
    aside = root.parent / f"{root.name}-aside-{len(list(root.parent.glob(root.name + '-aside-*')))}"
    aside.mkdir()
    for name in ("index", "frames"):
        (root / name).rename(aside / name)


def test_same_index_for_1_or_2_processes_and_1_or_3_shards(source, tmp_path):
    root = _copy(source, tmp_path / "data")
    cfg = _cfg(root)
    one = extract(DATASET, cfg, processes=1)
    assert one["processes"] == 1 and one["usable"] == 11 and one["bad"] == 1 and one["bad_videos"] == 1
    ref = _outputs(root)
    assert len(ref) == 3 + 11  # one store file per usable clip
    _check_store_digests(root)

    _clear(root)
    two = extract(DATASET, cfg, processes=2)
    assert two["processes"] == 2 and two["processed"] == 12 and two["reused"] == 0
    assert _outputs(root) == ref

    _clear(root)
    parts = [extract_shard(DATASET, cfg, i, 3, processes=1) for i in range(3)]
    assert [p["items"] for p in parts] == [4, 4, 4] and all(p["complete"] for p in parts)
    assert sum(p["bad"] for p in parts) == 1  # the corrupt clip: skipped in its shard, counted
    merged = merge(DATASET, cfg, 3)
    assert (merged["usable"], merged["bad"], merged["shards"]) == (11, 1, 3)
    assert _outputs(root) == ref


def test_killed_sharded_extraction_resumes_without_redoing_finished_work(source, tmp_path):
    ref_root = _copy(source, tmp_path / "ref")
    extract(DATASET, _cfg(ref_root), processes=1)
    root = _copy(source, tmp_path / "data")
    cfg = _cfg(root)
    items = items_of(root, DATASET, manifest_records(root, DATASET, "train"))

    # the job array is killed: shard 0 finished, shard 1 did 2 of its 4 items, shard 2 never ran
    assert extract_shard(DATASET, cfg, 0, 3)["complete"]
    cut = extract_shard(DATASET, cfg, 1, 3, stop_after=2)
    assert (cut["complete"], cut["processed"]) == (False, 2)
    assert not shard_index_path(root, DATASET, 1, 3).exists()
    with pytest.raises(DataError, match=r"1-of-3.jsonl: shard 1/3 of webvid is not finished; run `rap extract"):
        merge(DATASET, cfg, 3)
    finished = shard_index_path(root, DATASET, 0, 3)
    before = finished.stat()

    # the finished items' media destroyed (their manifest rows unchanged): a re-probe or a re-hash
    # would now fail them or rename their store files, and the merged index would differ
    done = shard_items(items, 0, 3) + shard_items(items, 1, 3)[:2]
    for it in done:
        it.record.path.write_bytes(b"not a video any more")

    again = [extract_shard(DATASET, cfg, i, 3) for i in range(3)]
    assert (again[0]["reused"], again[0]["processed"]) == (4, 0)
    assert (again[1]["reused"], again[1]["processed"]) == (2, 2)
    assert (again[2]["reused"], again[2]["processed"]) == (0, 4)
    after = finished.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    summary = merge(DATASET, cfg, 3)
    assert summary["bad"] == 1 and summary["usable"] == 11
    ref_index, _ = index_paths(ref_root, DATASET)
    assert index_paths(root, DATASET)[0].read_bytes() == ref_index.read_bytes()

    # a store file gone or torn since is made again (a stat per item, no probe of the others)
    untouched = {it.record.path for it in items} - {it.record.path for it in done}
    entry = next(e for e in read_index(root, DATASET) if e.record.path in untouched)
    (root / entry.store).write_bytes((root / entry.store).read_bytes()[:-7])
    shard = next(it.pos % 3 for it in items if it.record.path == entry.record.path)
    redo = extract_shard(DATASET, cfg, shard, 3)
    assert (redo["processed"], redo["reused"]) == (1, 3) and redo["store_bytes_written"] > 0


def test_changed_settings_or_manifest_make_shard_files_stale(source, tmp_path):
    root = _copy(source, tmp_path / "data")
    for i in range(2):
        extract_shard(DATASET, _cfg(root), i, 2)
    with pytest.raises(DataError, match=r"0-of-2.jsonl: made with other store settings"):
        merge(DATASET, _cfg(root, image_size=24), 2)
    entries = read_manifest(root, DATASET)  # the first item downloaded anew: another digest
    entries[0] = dataclasses.replace(entries[0], digest="sha256:" + "0" * 64)
    write_manifest(root, DATASET, entries)
    with pytest.raises(DataError, match=r"0-of-2.jsonl: made from another manifest"):
        merge(DATASET, _cfg(root), 2)
    redo = extract_shard(DATASET, _cfg(root), 0, 2)  # only the changed item again
    assert (redo["reused"], redo["processed"]) == (5, 1)
    assert merge(DATASET, _cfg(root), 2)["usable"] == 11
    redo = extract_shard(DATASET, _cfg(root, image_size=24), 0, 2)  # other settings: every item again
    assert (redo["reused"], redo["processed"]) == (0, 6)


@pytest.mark.parametrize("value", ["3/3", "1", "a/b", "-1/2", "0/0"])
def test_cli_rejects_a_bad_shard(value, capsys):
    with pytest.raises(SystemExit) as err:
        main(["extract", DATASET, f"--shard={value}"])
    assert err.value.code == 2 and f"argument --shard: {value!r}: expected I/N" in capsys.readouterr().err


def test_reordered_manifest_reuses_results_at_their_new_positions(source, tmp_path):
    fresh = _copy(source, tmp_path / "fresh")
    write_manifest(fresh, DATASET, read_manifest(fresh, DATASET)[::-1])
    extract(DATASET, _cfg(fresh))
    root = _copy(source, tmp_path / "data")
    extract(DATASET, _cfg(root))
    write_manifest(root, DATASET, read_manifest(root, DATASET)[::-1])  # same rows, other order
    again = extract(DATASET, _cfg(root))
    assert (again["reused"], again["processed"]) == (12, 0)
    assert index_paths(root, DATASET)[0].read_bytes() == index_paths(fresh, DATASET)[0].read_bytes()


# ---------------------------------------------------------------------------------------------
# Tar shards (data.store_format wds / wds-npy): 3 clips per tar, so the 12 items make 4 tars
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["wds", "wds-npy"])
def test_tar_shards_same_for_1_or_2_processes_and_1_or_2_shards(source, tmp_path, fmt):
    root = _copy(source, tmp_path / "data")
    cfg = _cfg(root, store_format=fmt, wds_shard_clips=3)
    one = extract(DATASET, cfg, processes=1)
    assert (one["usable"], one["bad"]) == (11, 1)  # the corrupt clip: skipped inside its tar, counted
    ref = _outputs(root)
    tars = [name for name in ref if name.startswith("frames/")]
    assert len(tars) == 4 and all(name.endswith(".tar") for name in tars), sorted(ref)
    entries = read_index(root, DATASET)
    assert all(re.fullmatch(r"frames/.+\.tar#\d+,\d+", e.store) for e in entries)
    _check_store_digests(root)
    suffix = ".jpgs" if fmt == "wds" else ".npy"
    members = [m for name in tars for m in tarfile.open(root / name).getmembers()]
    assert len(members) == 11 and all(m.name.endswith(suffix) and m.mtime == 0 for m in members)

    _clear(root)
    assert extract(DATASET, cfg, processes=2)["processed"] == 12
    assert _outputs(root) == ref

    _clear(root)
    parts = [extract_shard(DATASET, cfg, i, 2, processes=1) for i in range(2)]
    assert [p["items"] for p in parts] == [6, 6]  # tars 0, 2 and 1, 3
    merge(DATASET, cfg, 2)
    assert _outputs(root) == ref


def test_killed_tar_shard_extraction_resumes_whole_tars(source, tmp_path):
    ref_root = _copy(source, tmp_path / "ref")
    extract(DATASET, _cfg(ref_root, store_format="wds", wds_shard_clips=3), processes=1)
    root = _copy(source, tmp_path / "data")
    cfg = _cfg(root, store_format="wds", wds_shard_clips=3)
    items = items_of(root, DATASET, manifest_records(root, DATASET, "train"))

    # shard 0 finished (tars 0 and 2); shard 1 killed after its first tar (items 3-5)
    assert extract_shard(DATASET, cfg, 0, 2)["complete"]
    cut = extract_shard(DATASET, cfg, 1, 2, stop_after=1)  # stops at the end of a tar
    assert (cut["complete"], cut["processed"]) == (False, 3)
    tars_before = {p: p.stat() for p in (root / "frames").rglob("*.tar")}
    assert len(tars_before) == 3
    for it in shard_items(items, 0, 2, 3) + shard_items(items, 1, 2, 3)[:3]:
        it.record.path.write_bytes(b"not a video any more")  # any re-probe would now fail it

    again = [extract_shard(DATASET, cfg, i, 2) for i in range(2)]
    assert [(a["reused"], a["processed"]) for a in again] == [(6, 0), (3, 3)]
    for p, st in tars_before.items():  # finished tars are never rewritten
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert merge(DATASET, cfg, 2)["usable"] == 11
    same = {name: data for name, data in _outputs(root).items() if not name.endswith(".bad.jsonl")}
    assert same == {name: data for name, data in _outputs(ref_root).items() if not name.endswith(".bad.jsonl")}

    # a torn tar: its chunk (3 items) is done again, nothing else
    torn = sorted(tars_before)[0]
    torn.write_bytes(torn.read_bytes()[:-700])
    chunk = int(torn.name[:6])
    redo = extract_shard(DATASET, cfg, chunk % 2, 2)
    assert (redo["processed"], redo["reused"]) == (3, 3)


def test_one_process_per_shard(source, tmp_path):
    """A second process on a shard that is being extracted stops at once, naming the holder."""
    root = _copy(source, tmp_path / "data")
    held = run_lock.acquire(shard_index_path(root, DATASET, 1, 2).with_suffix(".lock"), "the first job")
    try:
        with pytest.raises(run_lock.RunLocked, match=r"webvid.shards is in use by a process.*the first job"):
            extract_shard(DATASET, _cfg(root), 1, 2)
        assert extract_shard(DATASET, _cfg(root), 0, 2)["complete"]  # another shard goes on
    finally:
        held.release()
    assert extract_shard(DATASET, _cfg(root), 1, 2)["complete"]
    assert not list((root / "index").rglob("*.lock"))  # released
