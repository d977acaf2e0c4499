"""One reader per dataset: the publisher's annotation files -> ``list[ClipRecord]``.

Files expected under ``<root>/raw/<dataset>/`` (what ``rap download`` fetches, or what the
synthetic corpus writes in the same format):

* ``webvid``  ``results_2M_train.csv`` (columns videoid, page_dir, name = caption; other columns
  ignored); videos at ``videos/{page_dir}/{videoid}.mp4``.
* ``cc3m``    ``cc3m_train.json``: a JSON list of ``{"image": <path relative to raw/cc3m>,
  "caption": ...}`` (the released code's format). ``rap download cc3m`` builds it from Google's
  ``Train_GCC-training.tsv`` (caption<TAB>url, no header) listing only the images it fetched,
  saved as ``images/{row:08d}.jpg`` (row = 0-based TSV line). An image is a static clip.
* ``msrvtt``  CLIP4Clip's ``msrvtt_data`` layout: ``MSRVTT_data.json`` (``sentences``:
  caption, video_id), ``MSRVTT_train.9k.csv`` / ``MSRVTT_train.7k.csv`` (JSFusion id lists,
  column video_id), ``MSRVTT_JSFUSION_test.csv`` (1k-A: key, vid_key, video_id, sentence; one
  caption per video). ``train-7k`` / ``val-7k`` (the 7k protocol: 6,513 official-train and
  497 official-val videos) read the release's ``train_videodatainfo.json`` /
  ``val_videodatainfo.json`` (JSON lines ``{caption, clip_name, sen_id}``) when present, else
  the 7k list split by MSRVTT_data.json's ``videos[].split``. Videos at
  ``videos/all/{video_id}.mp4``.
* ``didemo``  LocalizingMoments ``{train,val,test}_data.json``: one entry per moment
  ``{annotation_id, description, video, times, dl_link, num_segments}``. The moments of one
  Flickr video (same ``dl_link``: some videos appear under two names, ``.mov`` and ``.mp4``)
  become ONE paragraph, sentences in file order (paragraph-to-video retrieval); sentences are
  kept intact (the released code split on commas and produced empty captions). The video id
  is the name up to its first dot; its file is ``videos/<video>``, ``videos/<video>.mp4`` or
  ``videos/<id>.mp4``, whichever exists (:func:`didemo_video_path`).
* ``msvd``    ``{train,val,test}_list.txt`` (one id a line) and ``raw-captions.pkl``
  (``{id: [caption as token list or str, ...]}`` in a dict, ``defaultdict(list)`` or
  ``OrderedDict``, read with a restricted unpickler that builds nothing else); videos
  ``YouTubeClips/{id}.avi``. Every caption is a query.
* ``lsmdc``   ``LSMDC16_annos_training.csv`` / ``LSMDC16_annos_val.csv`` /
  ``LSMDC16_challenge_1000_publictect.csv``: tab-separated clip, start, end, start, end,
  sentence; the lines of one clip id are one video with several captions; clips at
  ``avi/<movie>/<clip>.avi`` with movie = clip id up to its last ``_``.

Formats, sources and the counts on the real files: docs/DESIGN.md "Annotation formats".

``check_sizes=True`` compares video (and, where fixed, caption) counts with the published
numbers in :data:`PUBLISHED`.
"""

from __future__ import annotations

import csv
import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from rap.data.records import ClipRecord, DataError
from rap.registry import SPLITS


@dataclass(frozen=True)
class Published:
    """Published split size. ``tol`` is a relative tolerance for numbers the papers round
    (WebVid "2.5M") or that differ by a few unavailable videos (DiDeMo)."""

    videos: int | None
    captions: int | None = None
    tol: float = 0.0
    source: str = ""


PUBLISHED: dict[tuple[str, str], Published] = {
    ("webvid", "train"): Published(2_500_000, tol=0.05, source="RaP 5.2: WebVid-2M, 2.5M pairs"),
    ("cc3m", "train"): Published(3_318_333, tol=0.0, source="Train_GCC-training.tsv rows (checked on the TSV)"),
    ("msrvtt", "train-7k"): Published(6_513, 130_260, source="official train split (7k protocol), 20 captions/video"),
    ("msrvtt", "val-7k"): Published(497, 9_940, source="official validate split (7k protocol), 20 captions/video"),
    ("msrvtt", "train-9k"): Published(9_000, 180_000, source="JSFusion 9k split, 20 captions/video"),
    ("msrvtt", "test"): Published(1_000, 1_000, source="1k-A test, one caption each"),
    # DiDeMo: one paragraph per Flickr video; the authors' files hold 1,004 test and 1,065 val
    # videos (distinct dl_links), the released code uses 1,003 / 1,065 of them.
    ("didemo", "train"): Published(8_392, tol=0.02, source="usable videos in the released code"),
    ("didemo", "val"): Published(1_065, tol=0.02, source="usable videos in the released code"),
    ("didemo", "test"): Published(1_003, tol=0.02, source="usable videos in the released code"),
    ("msvd", "train"): Published(1_200, 48_774, source="RaP 5.3; captions: CLIP4Clip's msvd_data"),
    ("msvd", "val"): Published(100, 4_290, source="RaP 5.3; captions: CLIP4Clip's msvd_data"),
    ("msvd", "test"): Published(670, 27_763, source="RaP 5.3; captions: CLIP4Clip's msvd_data"),
    # LSMDC: the published numbers count (clip, sentence) lines; a clip id may carry several
    # sentences and is then one video, so only the public test's 1,000 clips are fixed.
    ("lsmdc", "train"): Published(None, 101_079, source="RaP 5.3 (sentences)"),
    ("lsmdc", "val"): Published(None, 7_408, source="RaP 5.3 (sentences)"),
    ("lsmdc", "test"): Published(1_000, 1_000, source="RaP 5.3"),
}

LSMDC_FILES = {
    "train": "LSMDC16_annos_training.csv",
    "val": "LSMDC16_annos_val.csv",
    "test": "LSMDC16_challenge_1000_publictect.csv",
}


def _need(path: Path, dataset: str, split: str) -> Path:
    if not path.is_file():
        raise DataError(
            f"{path}: missing annotation file for {dataset} split {split!r} "
            f"(run `rap download {dataset}` or place it there by hand)"
        )
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty annotation file for {dataset} split {split!r} (incomplete download?)")
    return path


def _text(path: Path) -> str:
    # surrogateescape: one bad byte must not make the whole file unreadable; the caption that
    # holds it is dropped (and counted) later by records.valid_caption.
    return path.read_text(encoding="utf-8", errors="surrogateescape")


def _csv_rows(path: Path, delimiter: str = ",") -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(_text(path)), delimiter=delimiter))
    return rows


def _json(path: Path):
    try:
        return json.loads(_text(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: malformed JSON ({err}); incomplete download?") from None


def _col(row: dict, key: str, path: Path, line: int) -> str:
    v = row.get(key)
    if v is None:
        raise DataError(f"{path}:{line}: missing column {key!r} (have {sorted(k for k in row if k)})")
    return v


# ---------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------


def _webvid(raw: Path, split: str) -> list[ClipRecord]:
    path = _need(raw / "results_2M_train.csv", "webvid", split)
    out = []
    for i, row in enumerate(_csv_rows(path), 2):
        vid, page = _col(row, "videoid", path, i), _col(row, "page_dir", path, i)
        out.append(ClipRecord(vid, raw / "videos" / page / f"{vid}.mp4", (_col(row, "name", path, i),), split))
    return out


def _cc3m(raw: Path, split: str) -> list[ClipRecord]:
    path = _need(raw / "cc3m_train.json", "cc3m", split)
    items = _json(path)
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a JSON list of {{image, caption}}")
    out = []
    for i, it in enumerate(items):
        if not isinstance(it, dict) or "image" not in it or "caption" not in it:
            raise DataError(f"{path}: item {i} lacks 'image' or 'caption': {it!r:.120}")
        out.append(ClipRecord(Path(it["image"]).stem, raw / it["image"], (it["caption"],), split, "image"))
    return out


def _msrvtt_captions(raw: Path, split: str) -> dict[str, list[str]]:
    path = _need(raw / "MSRVTT_data.json", "msrvtt", split)
    data = _json(path)
    caps: dict[str, list[str]] = {}
    for i, s in enumerate(data.get("sentences", []) if isinstance(data, dict) else []):
        try:
            caps.setdefault(s["video_id"], []).append(s["caption"])
        except (KeyError, TypeError):
            raise DataError(f"{path}: sentences[{i}] lacks video_id/caption") from None
    if not caps:
        raise DataError(f"{path}: no 'sentences' with captions")
    return caps


# The 7k protocol of the release (retrieval_msrvtt7k.yaml, MSRVTT_dataset.py:44-53): train on the
# 6,513 official-train videos, choose the epoch on the 497 official-val videos; the two make
# JSFusion's 7k list. Its JSON-lines files first (msrvtt_train_7k.jsonl: an earlier name of
# the same train file), else MSRVTT_data.json's own split field over the 7k list.
MSRVTT_7K_FILES = {
    "train-7k": ("train_videodatainfo.json", "msrvtt_train_7k.jsonl"),
    "val-7k": ("val_videodatainfo.json",),
}
MSRVTT_OFFICIAL_SPLIT = {"train-7k": "train", "val-7k": "validate"}


def _msrvtt_jsonl(path: Path, split: str, video: Callable[[str], Path]) -> list[ClipRecord]:
    """JSON lines ``{caption, clip_name, sen_id}``, the release's format: one video per clip_name."""
    lines = [(n, line) for n, line in enumerate(_text(path).splitlines(), 1) if line.strip()]
    try:  # one decode of the whole file (130k lines): several times faster than one per line
        rows = json.loads("[" + ",".join(line for _, line in lines) + "]")
    except json.JSONDecodeError:
        rows = None
    caps: dict[str, list[str]] = {}
    for i, (n, line) in enumerate(lines):
        try:
            d = rows[i] if rows is not None else json.loads(line)
            caps.setdefault(d["clip_name"], []).append(d["caption"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{path}:{n}: expected a JSON object with clip_name and caption") from None
    return [ClipRecord(v, video(v), tuple(c), split) for v, c in caps.items()]


def _msrvtt_official_7k(raw: Path, split: str, video: Callable[[str], Path]) -> list[ClipRecord]:
    """The videos of JSFusion's 7k list whose MSRVTT_data.json ``split`` is the official train
    (``train-7k``) or validate (``val-7k``) one."""
    ids_path = _need(raw / "MSRVTT_train.7k.csv", "msrvtt", split)
    data_path = raw / "MSRVTT_data.json"
    all_caps = _msrvtt_captions(raw, split)
    official = {
        v.get("video_id"): v.get("split") for v in (_json(data_path).get("videos") or []) if isinstance(v, dict)
    }
    want = MSRVTT_OFFICIAL_SPLIT[split]
    out = []
    for i, r in enumerate(_csv_rows(ids_path), 2):
        vid = _col(r, "video_id", ids_path, i)
        if vid not in official:
            raise DataError(f"{ids_path}:{i}: video {vid!r} has no entry with a 'split' in {data_path} 'videos'")
        if official[vid] != want:
            continue
        if vid not in all_caps:
            raise DataError(f"{ids_path}:{i}: video {vid!r} has no captions in {data_path}")
        out.append(ClipRecord(vid, video(vid), tuple(all_caps[vid]), split))
    return out


def _msrvtt(raw: Path, split: str) -> list[ClipRecord]:
    video = lambda vid: raw / "videos" / "all" / f"{vid}.mp4"  # noqa: E731
    if split == "test":
        path = _need(raw / "MSRVTT_JSFUSION_test.csv", "msrvtt", split)
        return [
            ClipRecord(_col(r, "video_id", path, i), video(r["video_id"]), (_col(r, "sentence", path, i),), split)
            for i, r in enumerate(_csv_rows(path), 2)
        ]
    if split in MSRVTT_7K_FILES:
        for name in MSRVTT_7K_FILES[split]:
            if (raw / name).is_file():
                return _msrvtt_jsonl(raw / name, split, video)
        return _msrvtt_official_7k(raw, split, video)
    ids_path = _need(raw / f"MSRVTT_train.{split.split('-')[1]}.csv", "msrvtt", split)
    all_caps = _msrvtt_captions(raw, split)
    out = []
    for i, r in enumerate(_csv_rows(ids_path), 2):
        vid = _col(r, "video_id", ids_path, i)
        if vid not in all_caps:
            raise DataError(f"{ids_path}:{i}: video {vid!r} has no captions in {raw / 'MSRVTT_data.json'}")
        out.append(ClipRecord(vid, video(vid), tuple(all_caps[vid]), split))
    return out


def didemo_stem(name: str) -> str:
    """A DiDeMo video name up to its first dot: the id the reference implementations re-encode
    to ``<stem>.mp4`` (``a_b_c.m4v`` -> ``a_b_c``; a bare trailing dot, ``a_b_c.``, too)."""
    return name.split(".", 1)[0]


def didemo_video_key(item: dict) -> str:
    """What makes two moments the same Flickr video: their ``dl_link`` (27+ test videos appear
    under a ``.mov`` and a ``.mp4`` name with one link), else the name up to its first dot."""
    link = item.get("dl_link")
    return link if isinstance(link, str) and link else didemo_stem(item["video"])


def didemo_video_path(videos: Path, names: list[str]) -> Path:
    """The first file present among the layouts users have, for every name the video carries:
    ``<video>`` (download_videos.py), ``<video>.mp4`` (download_videos_AWS.py, e.g.
    ``x.m4v.mp4``; ``x..mp4`` for a name ending in a bare dot), ``<stem>.mp4`` (the reference
    implementations' re-encode). None present: the re-encode layout (reported missing later)."""
    candidates = [videos / f"{n}{ext}" for n in names for ext in ("", ".mp4")]
    candidates += [videos / f"{didemo_stem(n)}.mp4" for n in names]
    for path in candidates:
        if path.is_file():
            return path
    return videos / f"{didemo_stem(names[0])}.mp4"


def _didemo(raw: Path, split: str) -> list[ClipRecord]:
    """One paragraph per Flickr video: its moments' descriptions in file order (the order of
    the released DiDeMo TSVs), videos in order of first appearance."""
    path = _need(raw / f"{split}_data.json", "didemo", split)
    items = _json(path)
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a JSON list of moments")
    names: dict[str, list[str]] = {}
    sentences: dict[str, list[str]] = {}
    for i, it in enumerate(items):
        if not isinstance(it, dict) or not isinstance(it.get("video"), str) or "description" not in it:
            raise DataError(f"{path}: item {i} lacks 'video' or 'description': {it!r:.120}")
        key = didemo_video_key(it)
        video_names = names.setdefault(key, [])
        if it["video"] not in video_names:
            video_names.append(it["video"])
        sentences.setdefault(key, []).append(it["description"])
    out, owner = [], {}
    for key, video_names in names.items():
        vid = didemo_stem(video_names[0])
        if owner.setdefault(vid, key) != key:
            raise DataError(f"{path}: two videos ({owner[vid]} and {key}) share the id {vid!r}")
        paragraph = " ".join(s.strip() for s in sentences[key] if isinstance(s, str) and s.strip())
        out.append(ClipRecord(vid, didemo_video_path(raw / "videos", video_names), (paragraph,), split))
    return out


class _SafeUnpickler(pickle.Unpickler):
    """raw-captions.pkl holds a mapping of lists of strings, written as whatever standard
    container its maker used (dict, ``collections.defaultdict(list)``, ``OrderedDict``). Only
    those containers' classes may be named in the pickle: anything else (a class that could run
    code on load) is refused."""

    # (Python 2 pickles name the builtins ``__builtin__``.)
    ALLOWED = frozenset(
        {("collections", "OrderedDict"), ("collections", "defaultdict")}
        | {(m, n) for m in ("builtins", "__builtin__") for n in ("dict", "list", "tuple")}
    )

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only dict/list containers allowed)")


def _msvd_captions(path: Path) -> Mapping[str, list]:
    try:
        with path.open("rb") as f:
            caps = _SafeUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise DataError(f"{path}: unreadable caption pickle ({err})") from None
    if not isinstance(caps, Mapping):
        raise DataError(f"{path}: expected a mapping {{video id: [caption, ...]}}, got {type(caps).__name__}")
    return caps


def _caption_text(caption: object, where: str) -> str:
    """A caption as stored: a token list (CLIP4Clip's msvd_data) or a plain string."""
    if isinstance(caption, str):
        return caption
    if isinstance(caption, (list, tuple)) and all(isinstance(t, str) for t in caption):
        return " ".join(caption)
    raise DataError(f"{where}: a caption must be a string or a list of tokens, got {caption!r:.80}")


def _msvd(raw: Path, split: str) -> list[ClipRecord]:
    ids_path = _need(raw / f"{split}_list.txt", "msvd", split)
    cap_path = _need(raw / "raw-captions.pkl", "msvd", split)
    caps = _msvd_captions(cap_path)
    out = []
    for n, vid in enumerate(_text(ids_path).split(), 1):
        if vid not in caps:  # `in`, not `[]`: a defaultdict would invent an empty entry
            raise DataError(f"{ids_path}:{n}: video {vid!r} has no captions in {cap_path}")
        if not isinstance(caps[vid], (list, tuple)):
            raise DataError(f"{cap_path}: captions of {vid!r} must be a list, got {type(caps[vid]).__name__}")
        texts = tuple(_caption_text(c, f"{cap_path} [{vid!r}]") for c in caps[vid])
        out.append(ClipRecord(vid, raw / "YouTubeClips" / f"{vid}.avi", texts, split))
    return out


def _lsmdc(raw: Path, split: str) -> list[ClipRecord]:
    """One record per clip id, its sentences in file order: a clip id can carry several
    sentences (CLIP4Clip's loader warns of it) and those are captions of ONE video, positives
    of one another, never two candidates."""
    path = _need(raw / LSMDC_FILES[split], "lsmdc", split)
    sentences: dict[str, list[str]] = {}
    for n, line in enumerate(_text(path).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 6:
            raise DataError(
                f"{path}:{n}: expected 6 tab-separated fields (clip, start, end, start, end, "
                f"sentence), got {len(parts)}"
            )
        sentences.setdefault(parts[0].strip(), []).append("\t".join(parts[5:]).strip())
    return [
        ClipRecord(clip, raw / "avi" / clip.rsplit("_", 1)[0] / f"{clip}.avi", tuple(caps), split)
        for clip, caps in sentences.items()
    ]


READERS: dict[str, Callable[[Path, str], list[ClipRecord]]] = {
    "webvid": _webvid,
    "cc3m": _cc3m,
    "msrvtt": _msrvtt,
    "didemo": _didemo,
    "msvd": _msvd,
    "lsmdc": _lsmdc,
}


def verify_sizes(dataset: str, split: str, records: list[ClipRecord], raw: Path) -> None:
    """Raise DataError when ``records`` disagree with the published split size."""
    pub = PUBLISHED[(dataset, split)]
    if dataset == "cc3m":  # the JSON lists the fetched images; the published size is the TSV's
        tsv = _need(raw / "Train_GCC-training.tsv", dataset, split)
        n_videos, n_caps = sum(1 for line in _text(tsv).splitlines() if line.strip()), None
    else:
        n_videos, n_caps = len(records), sum(len(r.captions) for r in records)
    if pub.videos is not None and abs(n_videos - pub.videos) > pub.tol * pub.videos:
        raise DataError(
            f"{raw}: {dataset} {split} has {n_videos} videos, published {pub.videos} "
            f"({pub.source}); incomplete or wrong annotation files?"
        )
    if pub.captions is not None and n_caps != pub.captions:
        raise DataError(f"{raw}: {dataset} {split} has {n_caps} captions, published {pub.captions} ({pub.source})")


def load_records(dataset: str, root: str | Path, split: str, *, check_sizes: bool = False) -> list[ClipRecord]:
    """Records of one split, read from ``<root>/raw/<dataset>/`` (see module docstring)."""
    if dataset not in READERS:
        raise DataError(f"unknown dataset {dataset!r}; expected one of {tuple(READERS)}")
    if split not in SPLITS[dataset]:
        raise DataError(f"unknown split {split!r} for {dataset}; expected one of {SPLITS[dataset]}")
    raw = Path(root) / "raw" / dataset
    records = READERS[dataset](raw, split)
    if check_sizes:
        verify_sizes(dataset, split, records, raw)
    return records
