"""torch Datasets, collate and loader builders (DESIGN.md "Tensor conventions").

Training batch (dict): ``video`` uint8 (B, K, 3, H, W), raw pixels that the model normalises
on the device (:func:`rap.model.video.normalize_frames`); ``video_aug`` (pre-training: a
second augmented view); ``input_ids``/``attention_mask`` (B, L) from the tokenizer passed in
(max ``model.text.max_len_train`` tokens); ``video_index`` (B,) long (fine-tuning: captions
of one video share it, so they are never negatives of each other); ``captions``; ``source``;
``n_skipped`` and ``skipped_files``.

Bad input (missing/zero-byte/truncated/corrupt video, unreadable image, a caption that is
empty or not UTF-8) never crashes an epoch: the sample is replaced by the next item of the
dataset (batches keep their size, which all-gathers across ranks need), the file is logged and
counted, and :class:`TrainLoader` raises only when an epoch's skips exceed
``data.max_bad_fraction`` of its samples.

Frames come from the pre-extracted store when ``data.frame_store`` is on and
``rap extract`` wrote one (sampling then indexes the stored frames), else they are decoded
on the fly (the index, or the raw annotation when there is no index).

Loading for a GPU: :class:`TrainLoader` builds ONE ``DataLoader`` per run (not per epoch):
its workers persist across epochs (``persistent_workers``), each keeps ``PREFETCH_FACTOR``
batches in flight, batches land in pinned memory when CUDA is available (the trainer copies
them with ``non_blocking=True``), and the frames stay uint8 until the model normalises them.
The batch sampler (:class:`MixedBatchSampler`, iterated in the main process) is moved to
each epoch's position before the epoch is iterated, so the batches are the same pure
function of (seed, epoch, step, rank) as with a fresh loader per epoch, and a mid-epoch
resume replays them exactly. The DataLoader draws its worker base seed from a generator of
its own (seed, rank): data loading never consumes the training's global RNG stream.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from rap.config import AugmentConfig, ConfigError, DataConfig, ScaleConfig, finetune_text_len
from rap.data import decode, store, transforms
from rap.data.adapters import load_records
from rap.data.clipindex import Clip, ClipIndex, ClipIndexBuilder
from rap.data.mixing import MixedBatchSampler
from rap.data.records import ClipRecord, DataError, clean_captions, index_paths, iter_index
from rap.data.sampling import sample_indices
from rap.registry import FINETUNE, FINETUNE_TASKS

log = logging.getLogger(__name__)

MAX_SUBSTITUTES = 16  # consecutive bad items tried before a sample is given up as an error
PREFETCH_FACTOR = 2  # batches in flight per worker (with num_workers > 0)
# A failed evaluation video: the ImageNet mean colour rounded to uint8 (normalises to within
# 0.01 of 0, the mean image).
BLANK_PIXEL = (124, 116, 104)


def load_clips(dataset: str, split: str, data_cfg: DataConfig) -> ClipIndex:
    """Usable clips of a split, as columns (:class:`ClipIndex`): from ``index/<dataset>.jsonl``
    when ``rap extract`` ran, else straight from the raw annotation (clips with no valid
    caption dropped and logged)."""
    root = Path(data_cfg.root)
    clips = ClipIndexBuilder()
    if index_paths(root, dataset)[0].is_file():
        for e in iter_index(root, dataset, split):
            clips.append(e.record, e.info, root / e.store if (data_cfg.frame_store and e.store) else None)
        index = clips.finish()
        if not len(index):
            raise DataError(f"{index_paths(root, dataset)[0]}: no usable clips for split {split!r}")
        return index
    for r in load_records(dataset, root, split, check_sizes=data_cfg.check_sizes):
        caps, dropped = clean_captions(r.captions)
        if dropped:
            log.warning("%s: dropped %d unusable caption(s) of %s", r.path, dropped, r.video_id)
        if caps:
            clips.append(ClipRecord(r.video_id, r.path, caps, r.split, r.kind), None, None)
    index = clips.finish()
    if not len(index):
        raise DataError(f"{root / 'raw' / dataset}: no clip with a usable caption in split {split!r}")
    return index


def as_index(clips: Sequence[Clip] | ClipIndex) -> ClipIndex:
    """``clips`` as columns (a list of :class:`Clip`, as tests and benchmarks build, is packed)."""
    return clips if isinstance(clips, ClipIndex) else ClipIndex.from_clips(clips)


def read_clip_frames(
    clip: Clip, k: int, mode: str, rng: np.random.Generator | None, short_side: int | None
) -> np.ndarray:
    """K sampled frames, uint8 (K, H, W, 3). Raises DecodeError/OSError/ValueError on bad files."""
    if clip.store is not None:
        arr = store.read_clip(clip.store)
        return np.asarray(arr[sample_indices(arr.shape[0], k, mode, rng)])
    rec = clip.record
    if rec.kind == "image" or decode.is_image(rec.path):
        return np.repeat(decode.read_image(rec.path, short_side), k, axis=0)  # a static K-frame clip
    info = clip.info or decode.probe(rec.path, verify=False)
    idx = sample_indices(info.num_frames, k, mode, rng)
    return decode.read_frames(rec.path, idx, short_side, src_size=(info.width, info.height))


class ClipTextDataset(Dataset):
    """(video, caption) training samples of one source.

    ``per_caption`` (fine-tuning): one item per (clip, caption), every caption seen each
    epoch; else (pre-training, and fine-tuning tasks in ``finetune.one_caption_per_video``) one
    item per clip with a random caption. ``augment``: the source's or task's augmentation. Items are indexed
    ``(item, sample_seed)`` by :class:`MixedBatchSampler`; a plain int uses the item as seed.
    """

    def __init__(
        self,
        clips: Sequence[Clip] | ClipIndex,
        *,
        frames: int,
        sampling: str,
        image_size: int,
        two_views: bool,
        hflip: bool = False,
        per_caption: bool = False,
        index_offset: int = 0,
        name: str = "",
        augment: AugmentConfig | None = None,
    ):
        self.clips = as_index(clips)
        self.frames, self.sampling, self.size = frames, sampling, image_size
        self.augment = augment or AugmentConfig()
        self.two_views, self.hflip, self.offset, self.name = two_views, hflip, index_offset, name
        # item -> (clip, caption) as arrays (None: item i is clip i with a random caption), so
        # a forked worker shares them instead of copying millions of tuples
        self.item_clip: np.ndarray | None = None
        self.item_caption: np.ndarray | None = None
        if per_caption:
            counts = self.clips.num_captions()
            self.item_clip = np.repeat(np.arange(len(self.clips), dtype=np.int64), counts)
            starts = np.repeat(np.cumsum(counts) - counts, counts)
            self.item_caption = np.arange(len(self.item_clip), dtype=np.int64) - starts
        self.skipped = 0  # in this process (workers keep their own: use the batch's n_skipped)

    def __len__(self) -> int:
        return len(self.clips) if self.item_clip is None else len(self.item_clip)

    def item(self, i: int) -> tuple[int, int]:
        """(clip, caption) of item ``i``; caption -1: one drawn at random."""
        if self.item_clip is None:
            return int(i), -1
        return int(self.item_clip[i]), int(self.item_caption[i])

    def _load(self, i: int, rng: np.random.Generator) -> dict[str, Any]:
        c, j = self.item(i)
        clip = self.clips[c]
        caps = clip.record.captions
        caption = caps[j] if j >= 0 else caps[int(rng.integers(len(caps)))]
        caption, _ = clean_captions((caption,))
        if not caption:
            raise ValueError(f"{clip.record.path}: empty or non-UTF-8 caption")
        caption = caption[0]
        frames = read_clip_frames(clip, self.frames, self.sampling, rng, self.size)
        aug = self.augment
        flip = bool((self.hflip or aug.flip) and rng.random() < 0.5)
        view = dict(view=aug.view, crop_scale=aug.crop_scale, randaugment=aug.randaugment)
        out = {
            "video": transforms.train_view(frames, self.size, rng, flip=flip, **view),
            "caption": transforms.swap_left_right(caption) if flip else caption,
            "video_index": self.offset + c,
        }
        if self.two_views:
            out["video_aug"] = transforms.train_view(frames, self.size, rng, flip=flip, **view)
        return out

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        i, seed = (key, key) if isinstance(key, (int, np.integer)) else key
        skipped: list[str] = []
        for t in range(MAX_SUBSTITUTES):
            j = (i + t) % len(self)  # the next item replaces a bad one: deterministic
            try:
                out = self._load(j, np.random.default_rng((seed, t)))
            except (decode.DecodeError, OSError, ValueError) as err:
                self.skipped += 1
                msg = str(err).splitlines()[0][:300]
                log.warning("skipping %s sample: %s", self.name or "train", msg)
                skipped.append(msg)
                continue
            out["n_skipped"], out["skipped_files"] = len(skipped), skipped
            return out
        raise DataError(
            f"{self.name}: {MAX_SUBSTITUTES} consecutive unusable samples from item {i}: " + " | ".join(skipped[:3])
        )


class MixedDataset(Dataset):
    """Several sources behind one index space ``(source, item, seed)``."""

    def __init__(self, sources: Sequence[ClipTextDataset], names: Sequence[str]):
        self.sources, self.names = list(sources), list(names)

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        s, i, seed = key
        out = self.sources[s][(i, seed)]
        out["source"] = self.names[s]
        return out


class Collate:
    """Stacks the uint8 frames and tokenises captions (``max_len`` tokens; any HF tokenizer)."""

    def __init__(self, tokenizer, max_len: int):
        self.tokenizer, self.max_len = tokenizer, max_len

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        caps = [s["caption"] for s in samples]
        tok = self.tokenizer(caps, padding="longest", truncation=True, max_length=self.max_len, return_tensors="pt")
        out = {
            "video": torch.stack([s["video"] for s in samples]),
            "input_ids": tok["input_ids"].long(),
            "attention_mask": tok["attention_mask"].long(),
            "video_index": torch.tensor([s["video_index"] for s in samples], dtype=torch.long),
            "captions": caps,
            "n_skipped": sum(s.get("n_skipped", 0) for s in samples),
            "skipped_files": [f for s in samples for f in s.get("skipped_files", [])],
        }
        if "video_aug" in samples[0]:
            out["video_aug"] = torch.stack([s["video_aug"] for s in samples])
        if "source" in samples[0]:
            out["source"] = samples[0]["source"]  # one source per batch by construction
        return out


class TrainLoader:
    """Iterates one epoch from the current data position; resumable via :meth:`set_position`.

    ``position`` is the (epoch, step) of the next batch: store it in checkpoints. After a full
    epoch the position moves to (epoch + 1, 0). ``skipped`` counts this epoch's bad samples.
    One ``DataLoader`` (:attr:`loader`, made on first use) serves every epoch of the run; see
    the module docstring. :meth:`close` stops its workers.
    """

    def __init__(
        self,
        dataset: Dataset,
        sampler: MixedBatchSampler,
        collate: Collate,
        *,
        num_workers: int,
        max_bad_fraction: float,
        name: str,
        pin_memory: bool | None = None,
    ):
        self.dataset, self.sampler, self.collate = dataset, sampler, collate
        self.num_workers, self.max_bad_fraction, self.name = num_workers, max_bad_fraction, name
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.epoch, self.step, self.skipped = 0, 0, 0
        self._loader: DataLoader | None = None

    @property
    def loader(self) -> DataLoader:
        """The run's DataLoader over :attr:`sampler` (created once)."""
        if self._loader is None:
            workers = self.num_workers > 0
            self._loader = DataLoader(
                self.dataset,
                batch_sampler=self.sampler,
                collate_fn=self.collate,
                num_workers=self.num_workers,
                persistent_workers=workers,
                prefetch_factor=PREFETCH_FACTOR if workers else None,
                pin_memory=self.pin_memory,
                generator=torch.Generator().manual_seed(_loader_seed(self.sampler)),
            )
        return self._loader

    def close(self) -> None:
        """Stop the DataLoader's persistent workers now (not whenever the garbage collector
        gets to a suspended epoch iterator) and drop it; a later epoch would make a new one."""
        loader, self._loader = self._loader, None
        it = getattr(loader, "_iterator", None)  # the persistent workers' iterator, if any
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    @property
    def position(self) -> tuple[int, int]:
        return self.epoch, self.step

    def set_position(self, epoch: int, step: int = 0) -> None:
        self.sampler.set_position(epoch, step)
        self.epoch, self.step, self.skipped = epoch, step, 0

    def set_epoch(self, epoch: int) -> None:
        self.set_position(epoch, 0)

    def __len__(self) -> int:
        return self.steps_per_epoch - self.step

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.sampler.set_position(self.epoch, self.step)  # read when the loader iterates the sampler
        loader = self.loader
        budget = self.max_bad_fraction * self.steps_per_epoch * self.sampler.batch_size
        for batch in loader:
            self.skipped += batch["n_skipped"]
            if self.skipped > budget:
                raise DataError(
                    f"{self.name}: {self.skipped} unusable samples this epoch, more than "
                    f"data.max_bad_fraction={self.max_bad_fraction} of "
                    f"{self.steps_per_epoch * self.sampler.batch_size}; latest: "
                    + " | ".join(batch["skipped_files"][:3])
                )
            self.step += 1
            yield batch
        self.epoch, self.step, self.skipped = self.epoch + 1, 0, 0
        self.sampler.set_position(self.epoch, 0)


def _loader_seed(sampler: MixedBatchSampler) -> int:
    """Seed of the DataLoader's own generator (its workers' base seed): (seed, rank)."""
    return int(np.random.SeedSequence((sampler.seed, sampler.rank)).generate_state(1)[0])


def build_pretrain_loader(
    cfg: ScaleConfig, tokenizer, *, seed: int, rank: int = 0, world_size: int = 1, batch_size: int | None = None
) -> TrainLoader:
    """Pre-training mix of ``pretrain.sources`` (WebVid videos, CC3M images as static clips),
    one source per batch drawn with ``pretrain.source_weights``; two views per sample."""
    d, offset, sources = cfg.data, 0, []
    for name in cfg.pretrain.sources:
        clips = load_clips(name, "train", d)
        sources.append(
            ClipTextDataset(
                clips,
                frames=d.frames_train,
                sampling=d.sampling_train,
                image_size=d.image_size,
                two_views=True,
                hflip=d.hflip,
                index_offset=offset,
                name=name,
                augment=cfg.pretrain.augment.get(name),
            )
        )
        offset += len(clips)
    ds = MixedDataset(sources, cfg.pretrain.sources)
    sampler = MixedBatchSampler(
        [len(s) for s in sources],
        cfg.pretrain.source_weights,
        batch_size or cfg.pretrain.optim.batch_size,
        seed=seed,
        rank=rank,
        world_size=world_size,
        mixing=cfg.pretrain.mixing,
    )
    return TrainLoader(
        ds,
        sampler,
        Collate(tokenizer, cfg.model.text.max_len_train),
        num_workers=d.num_workers,
        max_bad_fraction=d.max_bad_fraction,
        name="pretrain",
    )


def build_finetune_loader(
    task: str,
    cfg: ScaleConfig,
    tokenizer,
    *,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int | None = None,
) -> TrainLoader:
    """Fine-tuning on ``task`` (:data:`rap.registry.FINETUNE`: its training split): one item
    per caption (or per video, ``finetune.one_caption_per_video``); ``video_index`` marks
    captions of the same video; ``finetune.augment[task]`` its augmentation."""
    if task not in FINETUNE:
        raise ConfigError(f"unknown fine-tuning task {task!r}; expected one of {FINETUNE_TASKS}")
    dataset, split = FINETUNE[task].dataset, FINETUNE[task].train
    d = cfg.data
    ds = ClipTextDataset(
        load_clips(dataset, split, d),
        frames=d.frames_train,
        sampling=d.sampling_train,
        image_size=d.image_size,
        two_views=False,
        hflip=d.hflip,
        per_caption=task not in cfg.finetune.one_caption_per_video,
        name=task,
        augment=cfg.finetune.augment.get(task),
    )
    mixed = MixedDataset([ds], [dataset])
    sampler = MixedBatchSampler(
        [len(ds)], [1.0], batch_size or cfg.finetune.optim.batch_size, seed=seed, rank=rank, world_size=world_size
    )
    max_len = finetune_text_len(cfg, task)
    report_truncation([c for clip in ds.clips for c in clip.record.captions], tokenizer, max_len, task)
    return TrainLoader(
        mixed,
        sampler,
        Collate(tokenizer, max_len),
        num_workers=d.num_workers,
        max_bad_fraction=d.max_bad_fraction,
        name=task,
    )


def report_truncation(captions: Sequence[str], tokenizer, max_len: int, name: str) -> int:
    """Warn how many training captions are longer than ``max_len`` tokens ([CLS]/[SEP]
    included) and will be cut; returns that number. Truncation is never silent."""
    lengths = [len(ids) for ids in tokenizer(list(captions), truncation=False)["input_ids"]] if captions else []
    cut = sum(n > max_len for n in lengths)
    if cut:
        log.warning(
            "%s: %d of %d training captions (%.1f %%) are longer than %d tokens and are truncated "
            "(longest %d; finetune.max_len_train sets the length per task)",
            name,
            cut,
            len(lengths),
            100.0 * cut / len(lengths),
            max_len,
            max(lengths),
        )
    return cut


# ---------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------


class EvalVideos(Dataset):
    """Videos of an evaluation split: ``frames_eval`` frames sampled ``sampling_eval``
    (uniform: deterministic), resize + centre crop, uint8 (K, 3, H, W). A video that fails to
    decode becomes a blank clip (:data:`BLANK_PIXEL`) flagged ``failed`` (it still ranks, as a
    miss: dropping it would change the test set), counted by :meth:`EvalSet.iter_videos`."""

    def __init__(self, clips: Sequence[Clip] | ClipIndex, *, frames: int, sampling: str, image_size: int):
        self.clips, self.frames, self.sampling, self.size = as_index(clips), frames, sampling, image_size

    def __len__(self) -> int:
        return len(self.clips)

    def read(self, i: int) -> torch.Tensor:
        """Video ``i`` as uint8 (K, 3, H, W) (the release recipe reads its own way: rap.release.data)."""
        frames = read_clip_frames(self.clips[i], self.frames, self.sampling, np.random.default_rng(i), self.size)
        return transforms.eval_view(frames, self.size)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            return {"video": self.read(i), "video_index": i, "failed": ""}
        except (decode.DecodeError, OSError, ValueError) as err:
            msg = str(err).splitlines()[0][:300]
            log.warning("evaluation video unusable: %s", msg)
            blank = torch.tensor(BLANK_PIXEL, dtype=torch.uint8).view(1, 3, 1, 1)
            blank = blank.expand(self.frames, 3, self.size, self.size).contiguous()
            return {"video": blank, "video_index": i, "failed": msg}


@dataclass
class EvalSet:
    """One evaluation split: videos, text queries and the ground truth between them.

    ``texts[i]`` is a query whose video is ``text_to_video[i]``; ``video_to_texts[v]`` lists
    the queries of video v (MSVD: every caption; DiDeMo: one paragraph; 1k-A: one caption).
    """

    dataset: str
    split: str
    videos: EvalVideos
    texts: list[str]
    text_to_video: list[int]
    video_to_texts: list[list[int]]
    max_bad_fraction: float = 0.05
    failed: list[str] = field(default_factory=list)

    def video_loader(self, batch_size: int, num_workers: int = 0, indices: range | None = None) -> DataLoader:
        videos = self.videos if indices is None else Subset(self.videos, indices)
        return DataLoader(
            videos,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            prefetch_factor=PREFETCH_FACTOR if num_workers > 0 else None,
            pin_memory=torch.cuda.is_available(),
        )

    def iter_videos(
        self, batch_size: int, num_workers: int = 0, indices: range | None = None
    ) -> Iterator[dict[str, Any]]:
        """Batches ``{"video", "video_index", "failed"}`` in order, of all videos or of
        ``indices`` (a rank's share); raises DataError as soon as more than
        ``max_bad_fraction`` of ALL the videos failed to decode here."""
        self.failed = []
        for batch in self.video_loader(batch_size, num_workers, indices):
            self.failed += [f for f in batch["failed"] if f]
            self.check_failures([self.failed])
            yield batch

    def check_failures(self, failed_per_rank: list[list[str]]) -> None:
        """Every rank's unusable videos (one list per rank) against ``max_bad_fraction``; keeps
        them all in ``failed``."""
        failed = [f for part in failed_per_rank for f in part]
        if len(failed) > self.max_bad_fraction * len(self.videos):
            raise DataError(
                f"{self.dataset} {self.split}: {len(failed)} of {len(self.videos)} evaluation "
                f"videos unusable (> data.max_bad_fraction={self.max_bad_fraction}); e.g. {failed[0]}"
            )
        self.failed = failed

    def tokenize(self, tokenizer, max_len: int) -> dict[str, torch.Tensor]:
        """All queries as ``input_ids``/``attention_mask`` (N, L), L <= ``max_len`` (eval: 64)."""
        tok = tokenizer(self.texts, padding="longest", truncation=True, max_length=max_len, return_tensors="pt")
        return {"input_ids": tok["input_ids"].long(), "attention_mask": tok["attention_mask"].long()}

    @property
    def gt(self) -> torch.Tensor:
        """(num_texts,) long: the video index of each query."""
        return torch.tensor(self.text_to_video, dtype=torch.long)


def build_eval_set(dataset: str, split: str, cfg: ScaleConfig | DataConfig) -> EvalSet:
    """Evaluation split of ``dataset`` (msrvtt "test" is 1k-A). Every caption becomes a query."""
    d = cfg.data if isinstance(cfg, ScaleConfig) else cfg
    clips = load_clips(dataset, split, d)
    texts, t2v, v2t = [], [], []
    for v, clip in enumerate(clips):
        v2t.append(list(range(len(texts), len(texts) + len(clip.record.captions))))
        for c in clip.record.captions:
            texts.append(c)
            t2v.append(v)
    videos = EvalVideos(clips, frames=d.frames_eval, sampling=d.sampling_eval, image_size=d.image_size)
    return EvalSet(dataset, split, videos, texts, t2v, v2t, max_bad_fraction=d.max_bad_fraction)
