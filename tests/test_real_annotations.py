"""The readers on the publishers' own annotation files (tests/fixtures/real/, see PROVENANCE.md).

Counts are the published ones (or, for DiDeMo, what the authors' files hold: one paragraph per
Flickr video, i.e. per distinct ``dl_link``). No media: only what the annotations say.
"""

from __future__ import annotations

import collections
import json
import pickle
import shutil
from pathlib import Path

import pytest

from rap.config import DataConfig
from rap.data.adapters import didemo_stem, load_records
from rap.data.datasets import build_eval_set
from rap.data.records import DataError

REAL = Path(__file__).parent / "fixtures" / "real"


def _root(tmp_path: Path, dataset: str, *names: str) -> Path:
    """``<tmp>/raw/<dataset>/`` holding copies of the real files (the readers' layout)."""
    raw = tmp_path / "raw" / dataset
    raw.mkdir(parents=True)
    for name in names:
        shutil.copyfile(REAL / dataset / name, raw / name)
    return tmp_path


def _eval_counts(dataset: str, split: str, root: Path) -> tuple[int, int]:
    es = build_eval_set(dataset, split, DataConfig(root=str(root), check_sizes=True))
    return len(es.texts), len(es.videos)


# --------------------------------------------------------------------------------------- MSRVTT


def test_msrvtt_1k_a_is_1000_queries_over_1000_videos(tmp_path):
    root = _root(tmp_path, "msrvtt", "MSRVTT_JSFUSION_test.csv")
    recs = load_records("msrvtt", root, "test", check_sizes=True)
    assert len({r.video_id for r in recs}) == 1000
    assert recs[0].video_id == "video9770" and recs[0].captions == ("a person is connecting something to system",)
    assert _eval_counts("msrvtt", "test", root) == (1000, 1000)


# --------------------------------------------------------------------------------------- DiDeMo


def _didemo_items(split: str) -> list[dict]:
    return json.loads((REAL / "didemo" / f"{split}_data.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("split, moments, videos", [("test", 4021, 1004), ("val", 4180, 1065)])
def test_didemo_one_paragraph_per_flickr_video(tmp_path, split, moments, videos):
    items = _didemo_items(split)
    assert len(items) == moments
    root = _root(tmp_path, "didemo", f"{split}_data.json")
    recs = load_records("didemo", root, split, check_sizes=True)  # published-size check passes as is
    assert len(recs) == videos == len({it["dl_link"] for it in items})
    assert len({r.video_id for r in recs}) == videos
    assert all(len(r.captions) == 1 and r.captions[0] for r in recs)
    assert _eval_counts("didemo", split, root) == (videos, videos)
    # every moment's sentence is in its video's paragraph, none twice, none lost
    assert sum(len(r.captions[0]) for r in recs) == sum(len(it["description"].strip()) for it in items) + sum(
        1 for it in items
    ) - len(recs)


def test_didemo_twins_sharing_a_dl_link_are_one_video_with_one_paragraph(tmp_path):
    items = _didemo_items("test")
    names_per_link = collections.defaultdict(set)
    for it in items:
        names_per_link[it["dl_link"]].add(it["video"])
    twins = {link: names for link, names in names_per_link.items() if len(names) > 1}
    assert len(twins) == 33  # 22 .mov/.mp4, 6 bare-dot/.mp4, 5 others in the authors' test file
    link, names = next((k, v) for k, v in twins.items() if {n.rsplit(".", 1)[-1] for n in v} == {"mov", "mp4"})
    recs = {r.video_id: r for r in load_records("didemo", _root(tmp_path, "didemo", "test_data.json"), "test")}
    (stem,) = {didemo_stem(n) for n in names}
    expected = " ".join(it["description"].strip() for it in items if it["dl_link"] == link)  # file order
    assert recs[stem].captions == (expected,)


def test_didemo_sentences_in_file_order(tmp_path):
    items = _didemo_items("val")
    recs = load_records("didemo", _root(tmp_path, "didemo", "val_data.json"), "val")
    by_id = {r.video_id: r.captions[0] for r in recs}
    first = items[0]
    in_file = [it["description"].strip() for it in items if it["dl_link"] == first["dl_link"]]
    assert by_id[didemo_stem(first["video"])] == " ".join(in_file)
    # the file does not keep a video's moments together: ordering by video would differ
    positions = [i for i, it in enumerate(items) if it["dl_link"] == first["dl_link"]]
    assert positions[-1] - positions[0] + 1 > len(positions)


LAYOUTS = {
    "download_videos.py": lambda name: name,
    "download_videos_AWS.py": lambda name: f"{name}.mp4",
    "re-encoded": lambda name: f"{didemo_stem(name)}.mp4",
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_didemo_every_video_found_in_each_users_layout(tmp_path, layout):
    items = _didemo_items("test")
    root = _root(tmp_path, "didemo", "test_data.json")
    videos = root / "raw" / "didemo" / "videos"
    videos.mkdir()
    saved = {}  # one file per Flickr video, as the downloader saves it (the last name per link)
    for it in items:
        saved[it["dl_link"]] = LAYOUTS[layout](it["video"])
    for name in saved.values():
        (videos / name).write_bytes(b"")
    assert any(n.endswith(".") or n.endswith("..mp4") for n in saved.values()) or layout == "re-encoded"
    recs = load_records("didemo", root, "test")
    assert len(recs) == len(saved)
    assert all(r.path.is_file() for r in recs), [str(r.path) for r in recs if not r.path.is_file()][:3]
    assert {r.path.name for r in recs} == set(saved.values())


def test_didemo_bare_dot_names_resolve(tmp_path):
    items = [it for it in _didemo_items("test") if it["video"].endswith(".")]
    assert len({it["video"] for it in items}) == 31
    name = items[0]["video"]
    root = _root(tmp_path, "didemo", "test_data.json")
    videos = root / "raw" / "didemo" / "videos"
    videos.mkdir()
    for saved in (name, f"{name}.mp4", f"{name[:-1]}.mp4"):
        (videos / saved).write_bytes(b"")
        rec = next(r for r in load_records("didemo", root, "test") if r.video_id == didemo_stem(name))
        assert rec.path.name == saved
        (videos / saved).unlink()


# --------------------------------------------------------------------------------------- MSVD


def test_msvd_test_is_27763_queries_over_670_videos(tmp_path):
    root = _root(tmp_path, "msvd", "test_list.txt", "val_list.txt", "raw-captions.pkl")
    assert _eval_counts("msvd", "test", root) == (27_763, 670)
    assert _eval_counts("msvd", "val", root) == (4_290, 100)
    rec = load_records("msvd", root, "test")[0]  # list order, token lists joined by spaces
    assert rec.video_id == "eyhzdC936uk_15_27" and rec.captions[0] == "a boy playing with dog"


@pytest.mark.parametrize("container", ["dict", "defaultdict", "OrderedDict"])
@pytest.mark.parametrize("protocol", [0, pickle.HIGHEST_PROTOCOL])  # 0: Python 2 names (__builtin__)
def test_msvd_pickle_in_any_standard_container(tmp_path, container, protocol):
    root = _root(tmp_path, "msvd", "test_list.txt")
    with (REAL / "msvd" / "raw-captions.pkl").open("rb") as f:
        real = pickle.load(f)  # our own fixture: trusted
    made = {
        "dict": dict,
        "OrderedDict": collections.OrderedDict,
        "defaultdict": lambda items: collections.defaultdict(list, items),
    }[container](real.items())
    with (root / "raw" / "msvd" / "raw-captions.pkl").open("wb") as f:
        pickle.dump(made, f, protocol=protocol)
    assert _eval_counts("msvd", "test", root) == (27_763, 670)


class _RunsCode:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("payload", [_RunsCode(), {"-4wsuPCjDBc_5_15": [_RunsCode()]}, collections.Counter({"a": 1})])
def test_msvd_pickle_that_could_run_code_is_refused(tmp_path, payload, capsys):
    root = _root(tmp_path, "msvd", "test_list.txt")
    with (root / "raw" / "msvd" / "raw-captions.pkl").open("wb") as f:
        pickle.dump(payload, f)
    with pytest.raises(DataError, match="raw-captions.pkl.*refusing to load"):
        load_records("msvd", root, "test")
    assert "pwned" not in capsys.readouterr().out


def test_didemo_download_limit_keeps_whole_videos(tmp_path):
    from rap.data.download import limit_annotations

    root = _root(tmp_path, "didemo", "test_data.json")
    raw = root / "raw" / "didemo"
    limit_annotations("didemo", raw, 40)
    kept = json.loads((raw / "test_data.json").read_text(encoding="utf-8"))
    links = {it["dl_link"] for it in kept}
    assert len(links) == 40
    assert len(kept) == sum(1 for it in _didemo_items("test") if it["dl_link"] in links)  # no moment lost
    assert len(load_records("didemo", root, "test")) == 40
    assert (raw / "test_data.json.full").is_file()
