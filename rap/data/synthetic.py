"""The embedded corpus: a deterministic, seeded set of REAL media files (h264 videos written
with PyAV, JPEG images with Pillow) and captions, laid out in each dataset's own annotation
format under ``raw/<dataset>/`` so that the real adapters read it.

What the clips show. Each clip has one dominant object with a colour, a shape and a motion
(moves left/right/up/down, grows, shrinks), optionally a colour change half-way and a second
object that appears in the second half, so objects and frame order both matter.

The paper's two kinds of inter-modal redundancy (Sec. 1, 3.3) are built in:

* visual redundancy: a textured background (stripes + noise) and small, desaturated clutter
  shapes that no caption ever mentions;
* textual redundancy: caption phrases that no frame shows ("on a sunny day", "while music
  plays", ...).

Learnability. Captions always name the dominant object's colour and shape, and every test
split gives each clip a distinct (colour, shape, motion) combination (distinct colour+shape
where the split is small enough), so a tiny model pre-trained on the WebVid/CC3M parts can beat
chance at zero-shot retrieval. Horizontal flips would swap "left"/"right": see transforms.py.

Ground truth: every dataset part also gets ``ground_truth.jsonl`` (:func:`ground_truth`; format
in docs/DESIGN.md, "Ground truth of the embedded corpus"): the shapes painted on each frame and
which caption words are shown or redundant. rap/data/ground_truth.py maps it onto patches and
tokens.

Determinism: every random choice comes from ``numpy.random.default_rng((seed, dataset))``
(each clip's texture, clutter and jitter from its own ``ClipSpec.seed``); x264 runs
single-threaded on its C code (``X264_OPTIONS``), so every file is a pure function of the seed
and scale (tests/test_reproducible.py).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import pickle
import string
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import av
import numpy as np
from PIL import Image
from tqdm import tqdm

from rap.atomic import atomic_write, write_text_atomic
from rap.registry import ALL_DATASETS

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 40, 40),
    "green": (40, 190, 70),
    "blue": (45, 90, 240),
    "yellow": (245, 225, 40),
    "purple": (165, 60, 215),
    "cyan": (40, 210, 220),
}
MOTIONS = ("left", "right", "up", "down", "grow", "shrink")
MOTION_PHRASES = {
    "left": ("moves to the left", "slides left", "travels leftwards", "drifts to the left"),
    "right": ("moves to the right", "slides right", "travels rightwards", "drifts to the right"),
    "up": ("moves up", "rises", "floats upwards", "goes up"),
    "down": ("moves down", "falls", "sinks down", "drops down"),
    "grow": ("grows", "gets bigger", "expands", "grows larger"),
    "shrink": ("shrinks", "gets smaller", "contracts", "becomes smaller"),
}
# Textual redundancy: words no frame can show.
REDUNDANT = (
    "on a sunny day",
    "while music plays",
    "in slow motion",
    "at a birthday party",
    "late at night",
    "near the old town",
    "in high definition",
    "with a happy mood",
    "as people cheer",
    "during the holidays",
)
FPS = 8
# x264 settings of every clip. ``asm=0`` runs x264's plain C code instead of the SIMD kernels
# it picks for the CPU: (1) with its AVX-512 kernels and macroblock-tree rate control (on by
# default) the same frames, encoded twice in one process, gave different bytes for ~15 % of our
# narrow clips (96x64, 64x64, 80x64; decoded pixels up to 6/255 apart) -- asm=AVX2 or
# mbtree=0 made 4 repetitions agree, asm=AVX512 did not; (2) x264's SIMD levels are not
# bit-exact with each other (AVX2 and C output differed for every clip tried), so any SIMD
# choice would make the corpus depend on the CPU's instruction set. The C code costs ~3x encode
# time (~0.3 s per 50 tiny clips). See docs/DESIGN.md, "Reproducibility".
X264_OPTIONS = {"preset": "veryfast", "crf": "18", "x264-params": "asm=0"}
MARKER = ".synthetic-complete.json"
GROUND_TRUTH = "ground_truth.jsonl"  # sidecar of every dataset part (ground_truth())
GROUND_TRUTH_VERSION = 1  # in the marker: a corpus made before the sidecar existed is remade
# in the marker too: a corpus of an earlier layout (version 1: test splits of 30-40 clips) is remade
CORPUS_VERSION = 2


@dataclass(frozen=True)
class SceneLook:
    """Generator knobs of the controlled experiment (issue 20; ``controlled/dvc.yaml``), never of
    the default corpus: ``object_scale`` multiplies the captioned objects' radii (2: about four
    times the area, so the background is a smaller share of the patches), ``texture`` the
    background's stripes and noise (0: a uniform background). At (1, 1) every file is byte for
    byte the default corpus's (the same draws, multiplied by one)."""

    object_scale: float = 1.0
    texture: float = 1.0

    def __post_init__(self) -> None:
        if not (0 < self.object_scale <= 3):
            raise ValueError(f"object_scale must be in (0, 3], got {self.object_scale}")
        if not (0 <= self.texture <= 10):
            raise ValueError(f"texture must be in [0, 10], got {self.texture}")


DEFAULT_LOOK = SceneLook()


@dataclass(frozen=True)
class ClipSpec:
    shape: str
    colour: str
    motion: str
    colour2: str | None  # colour after the half-way change
    second: tuple[str, str] | None  # (colour, shape) appearing in the second half
    width: int
    height: int
    frames: int
    seed: int  # background texture, clutter and jitter
    look: SceneLook = DEFAULT_LOOK


# ---------------------------------------------------------------------------------------
# Specs and captions
# ---------------------------------------------------------------------------------------


def _specs(
    rng: np.random.Generator,
    n: int,
    *,
    unique: bool,
    size: tuple[int, int],
    change_p: float = 0.25,
    second_p: float = 0.35,
    at_least_one_event: bool = False,
    look: SceneLook = DEFAULT_LOOK,
) -> list[ClipSpec]:
    """``n`` clip specs; ``unique`` gives every clip its own (colour, shape, motion), with
    distinct (colour, shape) as long as there are enough of them (test splits)."""
    colours = list(COLOURS)
    if unique and n > len(COLOURS) * len(SHAPES) * len(MOTIONS):
        raise ValueError(
            f"{n} distinct clips asked for, but only {len(COLOURS) * len(SHAPES) * len(MOTIONS)} "
            "(colour, shape, motion) combinations exist"
        )
    if unique:
        pairs = [(c, s) for c in colours for s in SHAPES]
        order = rng.permutation(len(pairs)).tolist()
        mains = []
        for i in range(n):
            c, s = pairs[order[i % len(pairs)]]
            m = MOTIONS[(i // len(pairs) + rng.integers(len(MOTIONS))) % len(MOTIONS)]
            mains.append((c, s, m))
        if len(set(mains)) < n:  # more clips than pairs: walk the motions to stay unique
            seen, fixed = set(), []
            for c, s, m in mains:
                k = MOTIONS.index(m)
                while (c, s, MOTIONS[k]) in seen:
                    k = (k + 1) % len(MOTIONS)
                seen.add((c, s, MOTIONS[k]))
                fixed.append((c, s, MOTIONS[k]))
            mains = fixed
    else:
        mains = [(colours[rng.integers(6)], SHAPES[rng.integers(6)], MOTIONS[rng.integers(6)]) for _ in range(n)]
    out = []
    for c, s, m in mains:
        change = rng.random() < change_p
        second = rng.random() < second_p
        if at_least_one_event and not (change or second):
            change, second = (True, False) if rng.random() < 0.5 else (False, True)
        c2 = colours[(colours.index(c) + 1 + rng.integers(5)) % 6] if change else None
        sec = None
        if second:
            sc = colours[(colours.index(c) + 1 + rng.integers(5)) % 6]
            ss = SHAPES[(SHAPES.index(s) + 1 + rng.integers(5)) % 6]
            sec = (sc, ss)
        out.append(
            ClipSpec(s, c, m, c2, sec, size[0], size[1], int(rng.integers(16, 33)), int(rng.integers(2**31)), look)
        )
    return out


SHOWN, REDUNDANT_PHRASE = "shown", "redundant"  # caption span labels (ground truth)


@dataclass(frozen=True)
class Caption:
    """A caption and its labelled character spans ``(start, end, label)``: ``shown`` for words
    naming what the frames show (colour, shape, motion, colour change, the second object),
    ``redundant`` for a phrase no frame shows (``REDUNDANT``); other words are unlabelled."""

    text: str
    spans: tuple[tuple[int, int, str], ...]

    @staticmethod
    def of(parts: list[tuple[str, str | None]]) -> "Caption":
        spans, pos = [], 0
        for piece, label in parts:
            if label and piece:
                spans.append((pos, pos + len(piece), label))
            pos += len(piece)
        return Caption("".join(piece for piece, _ in parts), tuple(spans))

    def wrap(self, head: str = "", tail: str = "", *, capitalise: bool = False) -> "Caption":
        text = self.text[0].upper() + self.text[1:] if capitalise else self.text
        return Caption(head + text + tail, tuple((a + len(head), b + len(head), k) for a, b, k in self.spans))


def _ending(choice: str, word: str) -> list[tuple[str, str | None]]:
    """``"... and turns red"`` -> the lead-in unlabelled, the final ``word`` shown."""
    return [(choice[: len(choice) - len(word)], None), (word, SHOWN)]


def _around(choice: str, named: str) -> list[tuple[str, str | None]]:
    """``", then a red star appears"`` -> ``named`` ("red star") shown, the rest unlabelled."""
    i = choice.index(named)
    return [(choice[:i], None), (named, SHOWN), (choice[i + len(named) :], None)]


def _sentence(
    spec: ClipSpec,
    rng: np.random.Generator,
    *,
    redundant_p: float = 0.5,
    drop_colour_p: float = 0.0,
    prefix: bool = True,
) -> Caption:
    # the draws and their order are the corpus: labelling must not add, drop or reorder one
    keep_colour = not rng.random() < drop_colour_p
    size = str(rng.choice(["", "", "big ", "large "]))
    verb = str(rng.choice(MOTION_PHRASES[spec.motion]))
    parts: list[tuple[str, str | None]] = [("a ", None), (size, None)]
    if keep_colour:
        parts += [(spec.colour, SHOWN), (" ", None)]
    parts += [(spec.shape, SHOWN), (" ", None), (verb, SHOWN)]
    if spec.colour2:
        parts += _ending(
            str(rng.choice([f" and turns {spec.colour2}", f" and changes colour to {spec.colour2}"])), spec.colour2
        )
    if spec.second:
        c, s = spec.second
        parts += _around(
            str(rng.choice([f", then a {c} {s} appears", f" before a small {c} {s} shows up"])), f"{c} {s}"
        )
    if rng.random() < redundant_p:
        parts += [(str(rng.choice([" ", ", "])), None), (str(rng.choice(REDUNDANT)), REDUNDANT_PHRASE)]
    lead = str(rng.choice(["", "", "in this video ", "in the clip "])) if prefix else ""
    return Caption.of([(lead, None), *parts])


def _captions(spec: ClipSpec, rng: np.random.Generator, n: int, **kw) -> list[Caption]:
    return [_sentence(spec, rng, **kw) for _ in range(n)]


def _paragraph(spec: ClipSpec, rng: np.random.Generator) -> list[Caption]:
    """DiDeMo: one sentence per temporal moment (2-4), some with commas inside."""
    sents = [
        Caption.of(
            [
                ("a ", None),
                (spec.colour, SHOWN),
                (" ", None),
                (spec.shape, SHOWN),
                (" ", None),
                (str(rng.choice(MOTION_PHRASES[spec.motion])), SHOWN),
                (".", None),
            ]
        )
    ]
    if spec.colour2:
        sents.append(
            Caption.of(
                [
                    ("the ", None),
                    (spec.shape, SHOWN),
                    (", now in the middle, turns ", None),
                    (spec.colour2, SHOWN),
                    (".", None),
                ]
            )
        )
    if spec.second:
        c, s = spec.second
        sents.append(Caption.of([("a ", None), (f"{c} {s}", SHOWN), (" appears in the second half.", None)]))
    if len(sents) < 4 and rng.random() < 0.6:
        sents.append(
            Caption.of(
                [("the camera stays still, ", None), (str(rng.choice(REDUNDANT)), REDUNDANT_PHRASE), (".", None)]
            )
        )
    return sents


# ---------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------


def _mask(shape: str, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
    if shape == "triangle":  # apex up
        return (dy <= 0.8 * r) & (dy >= -r + 1.8 * np.abs(dx))
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if shape == "star":  # five points
        rho = np.hypot(dx, dy)
        theta = np.arctan2(dy, dx) + np.pi / 2
        return rho <= r * (0.55 + 0.45 * np.cos(5 * theta))
    if shape == "cross":
        a, b = np.abs(dx), np.abs(dy)
        return ((a <= r / 3) & (b <= r)) | ((b <= r / 3) & (a <= r))
    raise ValueError(f"unknown shape {shape!r}")


def _background(rng: np.random.Generator, w: int, h: int, texture: float = 1.0) -> tuple[np.ndarray, list]:
    """Muted textured background plus small clutter shapes (visual redundancy); ``texture``
    scales the stripes and the noise (:class:`SceneLook`)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.integers(70, 150) + rng.integers(-15, 16, size=3)
    angle, freq = rng.uniform(0, np.pi), rng.uniform(0.15, 0.6)
    stripes = 14 * np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy))
    noise = rng.normal(0, 5, size=(h, w, 3))
    if texture != 1.0:  # the default corpus keeps its exact arithmetic
        stripes, noise = stripes * np.float32(texture), noise * texture
    img = base[None, None, :] + stripes[..., None] + noise
    clutter = []
    m = min(w, h)
    for _ in range(int(rng.integers(2, 5))):
        c = np.array(COLOURS[list(COLOURS)[rng.integers(6)]], np.float32)
        grey = c.mean()
        dull = 0.3 * c + 0.7 * grey  # desaturated: clearly not one of the caption colours
        clutter.append(
            (
                SHAPES[rng.integers(6)],
                dull,
                rng.uniform(0.1, 0.9) * w,
                rng.uniform(0.1, 0.9) * h,
                rng.uniform(0.05, 0.08) * m,
            )
        )
    return img.astype(np.float32), clutter


@dataclass(frozen=True)
class Drawn:
    """One shape painted on one frame, in paint order (later ones cover earlier ones).
    ``role``: "object" (the captioned main object), "second" (the captioned second object) or
    "clutter" (never captioned: visual redundancy)."""

    role: str
    shape: str
    rgb: tuple[int, int, int] | np.ndarray
    cx: float
    cy: float
    r: float


def scene(spec: ClipSpec, static: bool = False) -> tuple[np.ndarray, list[list[Drawn]]]:
    """The clip's background (float32 (H, W, 3)) and, per frame, the shapes painted on it.

    Every random draw of the clip happens here, in one fixed order from ``spec.seed``, so the
    frames (:func:`render`) and the ground truth (:func:`ground_truth`) describe the same clip.
    Positions keep the types the arithmetic gave them (numpy float64 scalars or Python floats):
    under NumPy 2's promotion rules that decides whether a mask is computed in float32 or
    float64, and so which boundary pixels it covers -- the corpus bytes depend on it."""
    rng = np.random.default_rng(spec.seed)
    w, h = spec.width, spec.height
    m = min(w, h)
    bg, clutter = _background(rng, w, h, spec.look.texture)
    r0 = 0.22 * m if spec.look.object_scale == 1.0 else 0.22 * m * spec.look.object_scale
    oy, ox = rng.uniform(-0.06, 0.06, size=2) * m
    sx, sy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h  # second object's place
    n = 1 if static else spec.frames
    frames: list[list[Drawn]] = []
    for t in range(n):
        a = 0.5 if static else t / max(1, n - 1)
        drawn = []
        for shape, col, cx, cy, r in clutter:
            jx, jy = rng.integers(-1, 2, size=2)  # clutter jitters a little: still never captioned
            drawn.append(Drawn("clutter", shape, col, cx + jx, cy + jy, r))
        cx, cy, r = w / 2 + ox, h / 2 + oy, r0
        if not static:
            if spec.motion == "left":
                cx = (0.74 - 0.48 * a) * w
            elif spec.motion == "right":
                cx = (0.26 + 0.48 * a) * w
            elif spec.motion == "up":
                cy = (0.74 - 0.48 * a) * h
            elif spec.motion == "down":
                cy = (0.26 + 0.48 * a) * h
            elif spec.motion == "grow":
                r = r0 * (0.45 + 0.85 * a)
            elif spec.motion == "shrink":
                r = r0 * (1.3 - 0.85 * a)
        colour = spec.colour2 if (spec.colour2 and a >= 0.5 and not static) else spec.colour
        drawn.append(Drawn("object", spec.shape, COLOURS[colour], cx, cy, r))
        if spec.second and (static or a >= 0.5):
            c2, s2 = spec.second
            drawn.append(Drawn("second", s2, COLOURS[c2], sx, sy, 0.13 * m * spec.look.object_scale))
        frames.append(drawn)
    return bg, frames


def render(spec: ClipSpec, static: bool = False) -> np.ndarray:
    """uint8 (T, H, W, 3) frames of a clip (``static``: one frame, object at rest)."""
    bg, per_frame = scene(spec, static)
    h, w = bg.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = np.empty((len(per_frame), h, w, 3), np.uint8)
    for t, drawn in enumerate(per_frame):
        img = bg.copy()
        for d in drawn:
            img[_mask(d.shape, xx, yy, d.cx, d.cy, d.r)] = d.rgb
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def write_video(path: Path, frames: np.ndarray, fps: int = FPS, gop: int | None = None) -> None:
    """h264 (yuv420p) in whatever container the suffix names (.mp4, .avi); ``gop``: key-frame
    interval (x264's default of 250 when None)."""

    def encode(file: BinaryIO) -> None:
        with av.open(file, "w", format=path.suffix.removeprefix(".")) as c:
            s = c.add_stream("libx264", rate=fps)
            s.width, s.height = frames.shape[2], frames.shape[1]
            s.pix_fmt = "yuv420p"
            s.options = dict(X264_OPTIONS)
            s.codec_context.thread_count = 1  # x264's frame threads reorder decisions between runs
            if gop:
                s.codec_context.gop_size = gop
            for f in frames:
                for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)

    atomic_write(path, encode, fsync=False)


def write_image(path: Path, frame: np.ndarray) -> None:
    atomic_write(path, lambda f: Image.fromarray(frame).save(f, format="JPEG", quality=92), fsync=False)


def ground_truth(video: str, spec: ClipSpec, captions: list[Caption], *, static: bool = False) -> dict:
    """One line of ``ground_truth.jsonl`` (format: docs/DESIGN.md, "Ground truth of the
    embedded corpus"): the shapes painted on every frame, in paint order, as
    ``[role, shape, cx, cy, r]`` in source pixels (2 decimals), and each caption's spans."""
    _, per_frame = scene(spec, static)
    return {
        "video": video,
        "width": spec.width,
        "height": spec.height,
        "fps": None if static else FPS,
        "frames": [
            [[d.role, d.shape, round(float(d.cx), 2), round(float(d.cy), 2), round(float(d.r), 2)] for d in drawn]
            for drawn in per_frame
        ],
        "captions": [{"text": c.text, "spans": [list(span) for span in c.spans]} for c in captions],
    }


def _write_truth(raw: Path, entries: list[dict]) -> None:
    """The sidecar beside the publisher-format files (which it never changes)."""
    write_text_atomic(raw / GROUND_TRUTH, "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in entries))


# ---------------------------------------------------------------------------------------
# One writer per dataset, in the publisher's format (see adapters.py for the formats)
# ---------------------------------------------------------------------------------------


# Test split sizes: large enough that the 95 % bootstrap interval of R@1 is about +-5 points or
# less (one query per video: p = 0.15 over 200 queries gives +-4.9; MSVD has 8-12 captions per
# video, 40 videos give ~400 queries), and at most the 216 distinct (colour, shape, motion)
# combinations a test split's clips are drawn without repetition from.
TEST_CLIPS = 200
MSVD_TEST_CLIPS = 40


def _count(n: int, scale: float, minimum: int = 4) -> int:
    return max(minimum, int(round(n * scale)))


def _clips(specs: list[ClipSpec], paths: list[Path], desc: str) -> None:
    for spec, p in tqdm(list(zip(specs, paths)), desc=desc, unit="clip", leave=False):
        write_video(p, render(spec))


def _gen_webvid(raw: Path, rng: np.random.Generator, scale: float, look: SceneLook = DEFAULT_LOOK) -> dict:
    n = _count(240, scale)
    specs = _specs(rng, n, unique=False, size=(96, 64), look=look)
    rows, paths, truth = [], [], []
    for i, spec in enumerate(specs):
        vid = f"{int(rng.integers(10**6, 10**8))}{i:04d}"  # numeric like WebVid's; suffix keeps it unique
        page = f"{(i // 50) * 50 + 1:06d}_{(i // 50 + 1) * 50:06d}"
        cap = _sentence(spec, rng, redundant_p=0.6).wrap(tail=".", capitalise=True)
        rows.append(
            {
                "videoid": vid,
                "contentUrl": f"https://example.invalid/webvid/{vid}.mp4",
                "duration": f"PT00H00M{spec.frames // FPS:02d}S",
                "page_dir": page,
                "name": cap.text,
            }
        )
        paths.append(raw / "videos" / page / f"{vid}.mp4")
        truth.append(ground_truth(f"videos/{page}/{vid}.mp4", spec, [cap]))
    _clips(specs, paths, "webvid")
    _write_truth(raw, truth)
    with (raw / "results_2M_train.csv").open("w", newline="", encoding="utf-8") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    return {"videos": n, "captions": n}


def _gen_cc3m(raw: Path, rng: np.random.Generator, scale: float, look: SceneLook = DEFAULT_LOOK) -> dict:
    n = _count(160, scale)
    specs = _specs(rng, n, unique=False, size=(80, 80), change_p=0.0, second_p=0.4, look=look)
    items, truth = [], []
    for i, spec in enumerate(tqdm(specs, desc="cc3m", unit="img", leave=False)):
        name = f"images/{i:08d}.jpg"
        write_image(raw / name, render(spec, static=True)[0])
        parts = [("a ", None), (spec.colour, SHOWN), (" ", None), (spec.shape, SHOWN)]
        if spec.second:
            parts += [(" and a small ", None), (f"{spec.second[0]} {spec.second[1]}", SHOWN)]
        if rng.random() < 0.6:
            parts += [(" ", None), (str(rng.choice(REDUNDANT)), REDUNDANT_PHRASE)]
        cap = Caption.of(parts)
        items.append({"image": name, "caption": cap.text})
        truth.append(ground_truth(name, spec, [cap], static=True))
    (raw / "cc3m_train.json").write_text(json.dumps(items, indent=0), encoding="utf-8")
    _write_truth(raw, truth)
    return {"images": n, "captions": n}


def _gen_msrvtt(raw: Path, rng: np.random.Generator, scale: float, look: SceneLook = DEFAULT_LOOK) -> dict:
    n9, n7, nt = _count(160, scale), _count(120, scale), _count(TEST_CLIPS, scale)
    # The 7k protocol's official-val share (497 of 7,010 videos): the last n_val of the 7k
    # videos, at least 4 of each split where the 9k list allows.
    n_val = _count(8, scale)
    n7 = min(max(n7, n_val + 4), n9)
    n_val = min(n_val, n7 - 1)
    train = _specs(rng, n9, unique=False, size=(64, 64), look=look)
    test = _specs(rng, nt, unique=True, size=(64, 64), look=look)
    videos, sentences, sen_id = [], [], 0
    test_rows, truth = [], []
    ids = {}
    for i, spec in enumerate(train + test):
        vid = f"video{i}"
        ids[i] = vid
        split = "train" if i < n9 else "test"
        official = "validate" if n7 - n_val <= i < n7 else split
        videos.append({"video_id": vid, "split": official, "id": i, "category": int(rng.integers(20))})
        caps = _captions(spec, rng, 5, drop_colour_p=0.15 if split == "train" else 0.0)
        if split == "test":
            caps[0] = _sentence(spec, rng)  # the one 1k-A query always names colour + shape
            test_rows.append(
                {"key": f"ret{len(test_rows)}", "vid_key": f"msr{i}", "video_id": vid, "sentence": caps[0].text}
            )
        for c in caps:
            sentences.append({"caption": c.text, "video_id": vid, "sen_id": sen_id})
            sen_id += 1
        truth.append(ground_truth(f"videos/all/{vid}.mp4", spec, caps))
    _clips(train + test, [raw / "videos" / "all" / f"{ids[i]}.mp4" for i in range(n9 + nt)], "msrvtt")
    (raw / "MSRVTT_data.json").write_text(json.dumps({"videos": videos, "sentences": sentences}), encoding="utf-8")
    with (raw / "MSRVTT_train.9k.csv").open("w", newline="", encoding="utf-8") as f:
        f.write("video_id\n" + "".join(f"video{i}\n" for i in range(n9)))
    by_vid: dict[str, list] = {}
    for s in sentences:
        by_vid.setdefault(s["video_id"], []).append(s)
    for name, videos_7k in (("train", range(n7 - n_val)), ("val", range(n7 - n_val, n7))):
        with (raw / f"{name}_videodatainfo.json").open("w", encoding="utf-8") as f:  # the release's files
            for i in videos_7k:
                for s in by_vid[f"video{i}"]:
                    row = {"caption": s["caption"], "clip_name": s["video_id"], "sen_id": s["sen_id"]}
                    f.write(json.dumps(row) + "\n")
    with (raw / "MSRVTT_JSFUSION_test.csv").open("w", newline="", encoding="utf-8") as f:
        wr = csv.DictWriter(f, fieldnames=["key", "vid_key", "video_id", "sentence"])
        wr.writeheader()
        wr.writerows(test_rows)
    _write_truth(raw, truth)
    return {"videos": n9 + nt, "captions": len(sentences)}


def _flickr_name(rng: np.random.Generator, i: int) -> str:
    hexs = "".join(rng.choice(list("0123456789abcdef"), size=10))
    return f"{int(rng.integers(10**7, 10**8))}@N0{i % 9}_{int(rng.integers(10**9, 10**10))}_{hexs}.mp4"


def _gen_didemo(raw: Path, rng: np.random.Generator, scale: float, look: SceneLook = DEFAULT_LOOK) -> dict:
    counts = {"train": _count(80, scale), "val": _count(20, scale), "test": _count(TEST_CLIPS, scale)}
    n_caps, n_vid, ann = 0, 0, 0
    truth: list[dict] = []
    for split, n in counts.items():
        specs = _specs(rng, n, unique=split != "train", size=(96, 72), at_least_one_event=True, look=look)
        items, paths = [], []
        for spec in specs:
            name = _flickr_name(rng, n_vid)
            n_vid += 1
            sents = _paragraph(spec, rng)
            for j, s in enumerate(sents):  # one entry per moment, as LocalizingMoments does
                t0 = min(5, j * 6 // len(sents))
                items.append(
                    {"video": name, "description": s.text, "times": [[t0, t0]], "annotation_id": ann, "num_segments": 6}
                )
                ann += 1
            n_caps += len(sents)
            paths.append(raw / "videos" / name)
            truth.append(ground_truth(f"videos/{name}", spec, sents))
        _clips(specs, paths, f"didemo-{split}")
        (raw / f"{split}_data.json").write_text(json.dumps(items), encoding="utf-8")
    _write_truth(raw, truth)
    return {"videos": n_vid, "captions": n_caps}


def _youtube_id(rng: np.random.Generator) -> str:
    alphabet = list(string.ascii_letters + string.digits + "-_")
    s = int(rng.integers(0, 200))
    return "".join(rng.choice(alphabet, size=11)) + f"_{s}_{s + int(rng.integers(3, 12))}"


def _gen_msvd(raw: Path, rng: np.random.Generator, scale: float, look: SceneLook = DEFAULT_LOOK) -> dict:
    counts = {"train": _count(60, scale), "val": _count(10, scale), "test": _count(MSVD_TEST_CLIPS, scale)}
    captions: dict[str, list[list[str]]] = {}
    truth: list[dict] = []
    for split, n in counts.items():
        specs = _specs(rng, n, unique=split != "train", size=(80, 64), look=look)
        ids = [_youtube_id(rng) for _ in specs]
        for vid, spec in zip(ids, specs):
            k = int(rng.integers(8, 13))
            caps = _captions(spec, rng, k, redundant_p=0.3)
            captions[vid] = [c.text.split() for c in caps]  # CLIP4Clip's raw-captions.pkl: token lists
            truth.append(ground_truth(f"YouTubeClips/{vid}.avi", spec, caps))
        _clips(specs, [raw / "YouTubeClips" / f"{v}.avi" for v in ids], f"msvd-{split}")
        (raw / f"{split}_list.txt").write_text("".join(v + "\n" for v in ids), encoding="utf-8")
    with (raw / "raw-captions.pkl").open("wb") as f:
        pickle.dump(captions, f, protocol=4)
    _write_truth(raw, truth)
    return {"videos": len(captions), "captions": sum(len(v) for v in captions.values())}


def _gen_lsmdc(raw: Path, rng: np.random.Generator, scale: float, look: SceneLook = DEFAULT_LOOK) -> dict:
    files = {
        "train": "LSMDC16_annos_training.csv",
        "val": "LSMDC16_annos_val.csv",
        "test": "LSMDC16_challenge_1000_publictect.csv",
    }
    counts = {"train": _count(100, scale), "val": _count(20, scale), "test": _count(TEST_CLIPS, scale)}
    total = 0
    truth: list[dict] = []
    for m_i, (split, n) in enumerate(counts.items()):
        specs = _specs(rng, n, unique=split != "train", size=(112, 64), look=look)
        movie = f"{m_i + 1:04d}_Synthetic_Shapes_{split.capitalize()}"
        lines, paths = [], []
        t = 10.0
        for spec in specs:
            start, end = t, t + spec.frames / FPS
            t = end + float(rng.uniform(0.5, 5))
            clip = f"{movie}_{_ts(start)}-{_ts(end)}"
            sent = _sentence(spec, rng, redundant_p=0.4, prefix=False).wrap("SOMEONE watches as ", ".")
            lines.append("\t".join([clip, _ts(start), _ts(end), _ts(start), _ts(end), sent.text]))
            paths.append(raw / "avi" / movie / f"{clip}.avi")
            truth.append(ground_truth(f"avi/{movie}/{clip}.avi", spec, [sent]))
        _clips(specs, paths, f"lsmdc-{split}")
        (raw / files[split]).write_text("\n".join(lines) + "\n", encoding="utf-8")
        total += n
    _write_truth(raw, truth)
    return {"videos": total, "captions": total}


def _ts(sec: float) -> str:
    h, rem = divmod(sec, 3600)
    m, s = divmod(rem, 60)
    return f"{int(h):02d}.{int(m):02d}.{s:06.3f}"


GENERATORS: dict[str, Callable[[Path, np.random.Generator, float], dict]] = {
    "webvid": _gen_webvid,
    "cc3m": _gen_cc3m,
    "msrvtt": _gen_msrvtt,
    "didemo": _gen_didemo,
    "msvd": _gen_msvd,
    "lsmdc": _gen_lsmdc,
}


def generate(
    dataset: str, raw_dir: str | Path, *, seed: int = 0, scale: float = 1.0, look: SceneLook = DEFAULT_LOOK
) -> dict:
    """Write the synthetic part for ``dataset`` under ``raw_dir`` (= ``<root>/raw/<dataset>``).

    ``scale`` multiplies every split size (tests use ~0.1); ``look``: the controlled
    experiment's generator knobs (:class:`SceneLook`). Idempotent: a completed generation with
    the same (seed, scale, look) is detected via a marker file and skipped.
    Returns a summary dict (counts, whether it was skipped).
    """
    if dataset not in GENERATORS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {ALL_DATASETS}")
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    raw = Path(raw_dir)
    marker = raw / MARKER
    want = {"seed": seed, "scale": scale, "ground_truth": GROUND_TRUTH_VERSION, "corpus": CORPUS_VERSION}
    if look != DEFAULT_LOOK:  # only then in the marker: a default corpus's marker stays valid
        want["look"] = dataclasses.asdict(look)
    if marker.is_file():
        done = json.loads(marker.read_text(encoding="utf-8"))
        done.setdefault("look", None)  # a marker without one: the default look
        if {k: done.get(k) for k in want} == want and (done["look"] is None) == ("look" not in want):
            _write_manifest(dataset, raw, only_if_absent=True)
            return {"dataset": dataset, "skipped": True, **done.get("counts", {})}
    raw.mkdir(parents=True, exist_ok=True)
    # (seed, dataset index): each dataset's part is independent of which others are generated.
    rng = np.random.default_rng((seed, ALL_DATASETS.index(dataset)))
    counts = GENERATORS[dataset](raw, rng, scale, look)
    write_text_atomic(marker, json.dumps({**want, "counts": counts}))  # last: a killed run is redone
    _write_manifest(dataset, raw, only_if_absent=False)
    return {"dataset": dataset, "skipped": False, **counts}


def _write_manifest(dataset: str, raw: Path, *, only_if_absent: bool) -> None:
    """What a download writes: ``<root>/manifest/<dataset>.jsonl`` (rap/data/manifest.py), when
    the corpus is generated at its place in a data root (``<root>/raw/<dataset>``)."""
    from rap.data import manifest

    if raw.parent.name != "raw":
        return
    root = raw.parent.parent
    if only_if_absent and manifest.manifest_path(root, dataset).is_file():
        return
    entries, _, _ = manifest.records_manifest(dataset, root)
    manifest.write_manifest(root, dataset, entries)
