"""Adapters on tiny hand-written files in each publisher's format (tmp_path)."""

from __future__ import annotations

import json
import pickle

import pytest

from rap.data import adapters
from rap.data.adapters import load_records
from rap.data.records import DataError, clean_captions


def _raw(tmp_path, name):
    d = tmp_path / "raw" / name
    d.mkdir(parents=True)
    return d


def test_webvid_csv(tmp_path):
    raw = _raw(tmp_path, "webvid")
    (raw / "results_2M_train.csv").write_text(
        "videoid,contentUrl,duration,page_dir,name\n"
        '21179416,https://x/a.mp4,PT00H00M11S,006001_006050,"Aerial shot, of a lake"\n'
        "5629,https://x/b.mp4,PT00H00M29S,000001_000050,Girl smiles\n",
        encoding="utf-8",
    )
    recs = load_records("webvid", tmp_path, "train")
    assert [r.video_id for r in recs] == ["21179416", "5629"]
    assert recs[0].path == raw / "videos" / "006001_006050" / "21179416.mp4"
    assert recs[0].captions == ("Aerial shot, of a lake",) and recs[0].kind == "video"


def test_cc3m_json_is_image_kind(tmp_path):
    raw = _raw(tmp_path, "cc3m")
    (raw / "cc3m_train.json").write_text(json.dumps([{"image": "images/00000007.jpg", "caption": "a dog"}]))
    (r,) = load_records("cc3m", tmp_path, "train")
    assert r.kind == "image" and r.path == raw / "images" / "00000007.jpg" and r.captions == ("a dog",)


def _msrvtt(raw):
    sents = [
        {"video_id": f"video{v}", "caption": f"caption {v}-{k}", "sen_id": v * 10 + k}
        for v in range(4)
        for k in range(3)
    ]
    official = ["train", "validate", "train", "test"]  # MSRVTT's own split of each video
    videos = [{"video_id": f"video{v}", "split": official[v]} for v in range(4)]
    (raw / "MSRVTT_data.json").write_text(json.dumps({"videos": videos, "sentences": sents}))
    (raw / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\nvideo1\nvideo2\n")
    (raw / "MSRVTT_train.7k.csv").write_text("video_id\nvideo0\nvideo1\n")
    (raw / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\nret0,msr3,video3,a man sings\n")


def test_msrvtt_splits(tmp_path):
    raw = _raw(tmp_path, "msrvtt")
    _msrvtt(raw)
    nine = load_records("msrvtt", tmp_path, "train-9k")
    assert [r.video_id for r in nine] == ["video0", "video1", "video2"]
    assert nine[1].captions == ("caption 1-0", "caption 1-1", "caption 1-2")
    assert nine[0].path == raw / "videos" / "all" / "video0.mp4"
    # the 7k protocol: the 7k list split by MSRVTT's official train / validate field
    assert [r.video_id for r in load_records("msrvtt", tmp_path, "train-7k")] == ["video0"]
    assert [r.video_id for r in load_records("msrvtt", tmp_path, "val-7k")] == ["video1"]
    lines = (
        '{"caption": "x", "clip_name": "video5", "sen_id": 1}\n{"caption": "y", "clip_name": "video5", "sen_id": 2}\n'
    )
    (raw / "msrvtt_train_7k.jsonl").write_text(lines)
    (r,) = load_records("msrvtt", tmp_path, "train-7k")  # the released JSON-lines file wins
    assert r.video_id == "video5" and r.captions == ("x", "y")
    (raw / "val_videodatainfo.json").write_text(lines.replace("video5", "video6"))
    (v,) = load_records("msrvtt", tmp_path, "val-7k")  # the release's own val file
    assert v.video_id == "video6"
    (t,) = load_records("msrvtt", tmp_path, "test")
    assert t.captions == ("a man sings",)


def test_didemo_paragraph_in_file_order_and_commas_kept(tmp_path):
    # File order, as the released DiDeMo TSVs and CLIP4Clip read it (not times[0], which is
    # one annotator's segment out of four or more).
    raw = _raw(tmp_path, "didemo")
    items = [
        {
            "video": "a@N00_1_ff.mov",
            "description": "then, slowly, he sits down.",
            "times": [[3, 4]],
            "annotation_id": 2,
        },
        {"video": "a@N00_1_ff.mov", "description": "a man walks in,", "times": [[0, 1]], "annotation_id": 1},
        {"video": "b@N00_2_ee.mp4", "description": "a dog barks", "times": [[1, 1]], "annotation_id": 3},
    ]
    (raw / "test_data.json").write_text(json.dumps(items))
    (raw / "videos").mkdir()
    (raw / "videos" / "a@N00_1_ff.mp4").write_bytes(b"x")  # mp4 re-encode of a .mov
    recs = load_records("didemo", tmp_path, "test")
    assert recs[0].captions == ("then, slowly, he sits down. a man walks in,",)
    assert recs[0].path.name == "a@N00_1_ff.mp4"
    assert len(recs) == 2 and all(len(r.captions) == 1 and r.captions[0] for r in recs)


def test_msvd_lists_and_pickle(tmp_path):
    raw = _raw(tmp_path, "msvd")
    (raw / "train_list.txt").write_text("vidA_1_5\nvidB_2_9\n")
    for s in ("val", "test"):
        (raw / f"{s}_list.txt").write_text("vidB_2_9\n")
    with (raw / "raw-captions.pkl").open("wb") as f:
        pickle.dump({"vidA_1_5": [["a", "cat", "plays"], ["cat", "playing"]], "vidB_2_9": ["a string caption"]}, f)
    recs = load_records("msvd", tmp_path, "train")
    assert recs[0].captions == ("a cat plays", "cat playing") and recs[1].captions == ("a string caption",)
    assert recs[0].path == raw / "YouTubeClips" / "vidA_1_5.avi"


def test_msvd_pickle_with_objects_is_refused(tmp_path):
    raw = _raw(tmp_path, "msvd")
    (raw / "train_list.txt").write_text("v\n")
    with (raw / "raw-captions.pkl").open("wb") as f:
        pickle.dump({"v": [DataError("not a caption")]}, f)
    with pytest.raises(DataError, match="raw-captions.pkl"):
        load_records("msvd", tmp_path, "train")


def test_lsmdc_tsv(tmp_path):
    raw = _raw(tmp_path, "lsmdc")
    (raw / "LSMDC16_annos_val.csv").write_text(
        "0001_American_Beauty_00.00.51.926-00.00.54.129\t00.00.51.926\t00.00.54.129\t00.00.51.000\t00.00.55.000"
        "\tSOMEONE looks up, surprised.\n"
    )
    (r,) = load_records("lsmdc", tmp_path, "val")
    assert r.path == raw / "avi" / "0001_American_Beauty" / "0001_American_Beauty_00.00.51.926-00.00.54.129.avi"
    assert r.captions == ("SOMEONE looks up, surprised.",)
    (raw / "LSMDC16_annos_training.csv").write_text("clip\t1\t2\n")
    with pytest.raises(DataError, match=r"LSMDC16_annos_training.csv:1: expected 6"):
        load_records("lsmdc", tmp_path, "train")


def test_lsmdc_clip_with_several_sentences_is_one_video(tmp_path):
    from rap.config import DataConfig
    from rap.data.datasets import ClipTextDataset, build_eval_set, load_clips

    raw = _raw(tmp_path, "lsmdc")
    clip_a, clip_b = "1010_TITANIC_00.41.32.072-00.41.40.196", "1010_TITANIC_00.41.41.000-00.41.45.000"
    (raw / "LSMDC16_annos_val.csv").write_text(
        f"{clip_a}\t0\t1\t0\t1\tSOMEONE runs.\n{clip_b}\t0\t1\t0\t1\tA door opens.\n"
        f"{clip_a}\t0\t1\t0\t1\tSOMEONE stops.\n"
    )
    recs = load_records("lsmdc", tmp_path, "val")
    assert [(r.video_id, r.captions) for r in recs] == [
        (clip_a, ("SOMEONE runs.", "SOMEONE stops.")),
        (clip_b, ("A door opens.",)),
    ]
    data_cfg = DataConfig(root=str(tmp_path))
    es = build_eval_set("lsmdc", "val", data_cfg)
    assert len(es.videos) == 2 and es.text_to_video == [0, 0, 1]  # one candidate, two queries
    ds = ClipTextDataset(
        load_clips("lsmdc", "val", data_cfg), frames=1, sampling="rand", image_size=8, two_views=False, per_caption=True
    )
    video_index = [ds.item(i)[0] for i in range(len(ds))]  # what a fine-tuning batch carries as video_index
    assert video_index == [0, 0, 1]  # the two sentences of clip_a are positives, never negatives


def test_missing_and_empty_files_name_the_file(tmp_path):
    _raw(tmp_path, "msrvtt")
    with pytest.raises(DataError, match=r"MSRVTT_JSFUSION_test.csv: missing annotation file"):
        load_records("msrvtt", tmp_path, "test")
    (tmp_path / "raw" / "msrvtt" / "MSRVTT_JSFUSION_test.csv").write_text("")
    with pytest.raises(DataError, match=r"MSRVTT_JSFUSION_test.csv: empty"):
        load_records("msrvtt", tmp_path, "test")
    with pytest.raises(DataError, match="unknown split 'val' for msrvtt"):
        load_records("msrvtt", tmp_path, "val")


def test_check_sizes_against_published_numbers(tmp_path):
    raw = _raw(tmp_path, "msrvtt")
    _msrvtt(raw)
    assert load_records("msrvtt", tmp_path, "test", check_sizes=False)
    with pytest.raises(DataError, match=r"msrvtt test has 1 videos, published 1000"):
        load_records("msrvtt", tmp_path, "test", check_sizes=True)
    raw = _raw(tmp_path, "lsmdc")
    lines = "".join(f"m_{i}\t0\t1\t0\t1\ts {i}\n" for i in range(1000))
    (raw / "LSMDC16_challenge_1000_publictect.csv").write_text(lines)
    assert len(load_records("lsmdc", tmp_path, "test", check_sizes=True)) == 1000


def test_check_sizes_counts_captions(monkeypatch, tmp_path):
    raw = _raw(tmp_path, "msrvtt")
    _msrvtt(raw)
    monkeypatch.setitem(adapters.PUBLISHED, ("msrvtt", "train-9k"), adapters.Published(3, 60))
    with pytest.raises(DataError, match=r"has 9 captions, published 60"):
        load_records("msrvtt", tmp_path, "train-9k", check_sizes=True)


def test_non_utf8_caption_survives_reading_and_is_dropped(tmp_path):
    raw = _raw(tmp_path, "webvid")
    (raw / "results_2M_train.csv").write_bytes(b"videoid,page_dir,name\n1,p,caf\xe9 latte\n2,p,good one\n3,p,  \n")
    recs = load_records("webvid", tmp_path, "train")
    assert len(recs) == 3
    assert clean_captions(recs[0].captions) == ((), 1)
    assert clean_captions(recs[1].captions) == (("good one",), 0)
    assert clean_captions(recs[2].captions) == ((), 1)
