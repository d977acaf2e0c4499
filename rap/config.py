"""Typed, validated configuration: the one place that reads ``params.yaml``.

``params.yaml`` has two layers:

* top-level ablation knobs (``lambda``, ``frames``, ``racl``, ``mask_video``, ``mask_text``,
  ``seed``, ``scale``) so that ``dvc exp run -S lambda=2.0`` reaches them directly;
* one block per scale (``embedded`` and ``paper``) holding everything that differs between
  the laptop-sized default and the paper's reproduction (datasets, model sizes, batch, epochs).

:func:`load_params` merges the knobs into the selected scale and returns a frozen
:class:`Params`. Every unknown key and every bad value is rejected here, before any work
starts, with a message that names the key and the value.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from rap.errors import RapError
from rap.registry import ALL_DATASETS, DOWNSTREAM_DATASETS, FINETUNE, FINETUNE_TASKS, PRETRAIN_SOURCES

RaclDirection = Literal["both", "v2t", "t2v", "none"]
RaclVariant = Literal["paper", "official"]
IntraVideoView = Literal["online", "momentum"]
RaclLocals = Literal["online", "momentum"]
MomentumVideoView = Literal["first", "second"]
TrainRecipe = Literal["paper", "release"]
Sampling = Literal["rand", "uniform", "headtail"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
LrSchedule = Literal["step", "cosine"]
CpuKernels = Literal["native", "avx2"]  # rap.cpu_kernels.KERNELS
# What an op without a deterministic kernel does (rap.training.determinism): "error" stops the
# run, "warn" warns and runs on, "none" seeds only (no deterministic kernels asked for).
Deterministic = Literal["error", "warn", "none"]
GradComm = Literal["fp32", "bf16"]


class ConfigError(RapError, ValueError):
    """A key or value in params.yaml (or an override) is invalid."""


# --------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------

# Pixel statistics (RGB, of pixels scaled to [0, 1]) a ViT's weights were trained with:
# ImageNet's for timm's DeiT; CLIP's for the authors' released RaP checkpoints (their loaders
# normalise with CLIP's values in pre-training and in every downstream dataset).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
EvalRecipe = Literal["rap", "release"]


@dataclass(frozen=True)
class VisionConfig:
    """Per-frame ViT (paper 3.2). ``timm_name`` is any timm ViT; the size fields override it
    (a tiny config at the embedded scale, None keeps the timm default)."""

    timm_name: str = "deit_base_patch16_224"
    pretrained: bool = False  # load timm weights (needs the hub or a local cache)
    img_size: int = 256  # position embedding interpolated from the pretrained size
    patch_size: int = 16
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    drop_path_rate: float = 0.0
    # Dropout probability inside the ViT: attention weights, the outputs of attention and MLP,
    # the embedded patches (timm's attn_drop_rate, proj_drop_rate, pos_drop_rate); None keeps
    # timm_name's own (0 for DeiT and ViT).
    dropout: float | None = None
    # With pretrained: a timm checkpoint file (or a directory holding model.safetensors) of
    # timm_name; None = the Hugging Face cache (rap/model/weights.py).
    weights: str | None = None
    # The pixel normalisation the weights expect (rap.model.video.normalize_frames, the one
    # place frames are normalised): ImageNet's for timm's DeiT; a checkpoint imported from the
    # release (rap import-release) records CLIP's, and evaluation / fine-tuning adopt it.
    pixel_mean: tuple[float, ...] = IMAGENET_MEAN
    pixel_std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        _check(
            self.img_size > 0 and self.img_size % self.patch_size == 0,
            "model.vision.img_size",
            self.img_size,
            f"must be a positive multiple of patch_size={self.patch_size}",
        )
        _check(len(self.pixel_mean) == 3, "model.vision.pixel_mean", self.pixel_mean, "must hold 3 values (RGB)")
        _check(
            len(self.pixel_std) == 3 and all(s > 0 for s in self.pixel_std),
            "model.vision.pixel_std",
            self.pixel_std,
            "must hold 3 positive values (RGB)",
        )
        _check_dropout("model.vision.dropout", self.dropout)


@dataclass(frozen=True)
class TextConfig:
    """BERT text encoder (paper 3.2). ``name`` is a transformers model id or ``tiny`` (built
    from the size fields, randomly initialised). ``tokenizer`` is a transformers id, a local
    tokenizer directory (vocab.txt + tokenizer_config.json), or ``builtin`` (an offline
    WordPiece vocabulary shipped with the package)."""

    name: str = "bert-base-uncased"
    pretrained: bool = True
    tokenizer: str = "bert-base-uncased"
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_len_train: int = 30
    max_len_eval: int = 64
    # Dropout probability inside BERT: attention weights and hidden states (transformers'
    # attention_probs_dropout_prob and hidden_dropout_prob); None keeps the model's own (0.1 for
    # bert-base-uncased and for `tiny`, BertConfig's default).
    dropout: float | None = None
    # With pretrained: a directory holding the transformers checkpoint of `name` (config.json,
    # model.safetensors, vocab.txt); None = the Hugging Face cache (rap/model/weights.py).
    weights: str | None = None

    def __post_init__(self) -> None:
        _check(
            self.hidden_size % self.num_heads == 0,
            "model.text.hidden_size",
            self.hidden_size,
            f"must be divisible by num_heads={self.num_heads}",
        )
        _check(self.max_len_train >= 4, "model.text.max_len_train", self.max_len_train, "must be >= 4")
        _check_dropout("model.text.dropout", self.dropout)


@dataclass(frozen=True)
class LossConfig:
    """Pre-training objective, eq. (10): L = L_others + lambda * L_RaCL.

    L_others holds the standard ITC (eqs. 2-3) and the auxiliary tasks of appendix A.1.
    """

    racl_lambda: float = 1.0  # eq. (10); top-level knob `lambda`
    racl: RaclDirection = "both"  # eq. (9) terms kept (Table 5); top-level knob `racl`
    racl_variant: RaclVariant = "paper"  # paper eqs. 4-8, or the released code's weighting
    racl_weight_grad: bool = True  # gradient flows through w = 1 - redundancy (paper: learnable)
    racl_weight_floor: float = 1e-4  # keeps log(sum w exp) finite when every w is ~0
    itc_weight: float = 1.0
    itm_weight: float = 1.0  # 0 switches the task off
    lm_weight: float = 1.0
    intra_video_weight: float = 1.0
    intra_text_weight: float = 1.0
    # Encoder of intra-video's second augmented view (A.1 does not say): "online" (with
    # gradient, two ViT passes with backward per clip) or "momentum" (an EMA copy, forward only,
    # as TCL, which A.1 follows, and the release do). See DESIGN.md "Second view".
    intra_video_view: IntraVideoView = "online"
    momentum: bool = False  # BLIP-style momentum encoders + queues + distillation (code option)
    momentum_m: float = 0.995
    queue_size: int = 57600
    distill_alpha: float = 0.4
    distill_ramp_epochs: float = 2.0
    lm_label_smoothing: float = 0.1
    # The release's objective (``train_recipe: release``, :func:`apply_train_recipe`); each off
    # by default. Local terms divided again by their count (rap/losses.py, official variant only):
    racl_double_normalise: bool = False
    # Encoder of RaCL's patch/token features: the online one (gradient into them) or the
    # momentum copy (the release: no gradient through the local features).
    racl_locals: RaclLocals = "online"
    # Intra-modal terms as the release's i2i/t2t: online embedding against [momentum
    # embedding; queue], one direction, hard targets; instead of in-batch symmetric InfoNCE.
    intra_queue: bool = False
    # Clip the momentum encoders see: "first" (the training view) or "second" (the augmented
    # view, as the release's pre-training: ITC targets, queue, i2i and local features).
    momentum_video_view: MomentumVideoView = "first"
    # Queues at the start: "empty" (slots masked until filled) or "random" (unit random vectors,
    # all counted as negatives from the first step, as the release: rap_pretrain.py:81-86).
    queue_init: Literal["empty", "random"] = "empty"

    def __post_init__(self) -> None:
        _check(self.racl_lambda >= 0, "lambda", self.racl_lambda, "must be >= 0")
        for name, on in (
            ("racl_locals", self.racl_locals == "momentum"),
            ("intra_queue", self.intra_queue),
            ("momentum_video_view", self.momentum_video_view == "second"),
        ):
            _check(not on or self.momentum, f"loss.{name}", getattr(self, name), "needs loss.momentum: true")
        _check(
            not self.racl_double_normalise or self.racl_variant == "official",
            "loss.racl_double_normalise",
            self.racl_double_normalise,
            "applies to racl_variant 'official' only",
        )
        _check(0 < self.racl_weight_floor < 1, "racl_weight_floor", self.racl_weight_floor, "must be in (0, 1)")
        for name in ("itc_weight", "itm_weight", "lm_weight", "intra_video_weight", "intra_text_weight"):
            _check(getattr(self, name) >= 0, f"loss.{name}", getattr(self, name), "must be >= 0")
        _check(0 <= self.momentum_m < 1, "loss.momentum_m", self.momentum_m, "must be in [0, 1)")
        _check(0 <= self.distill_alpha <= 1, "loss.distill_alpha", self.distill_alpha, "must be in [0, 1]")


@dataclass(frozen=True)
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 256  # shared L2-normalised space (paper 3.2)
    temp_init: float = 0.07
    temp_min: float = 0.001
    temp_max: float = 0.5
    mask_video: float = 0.0  # MAC spatial mask ratio r_v (pre-training only); top-level knob
    mask_text: float = 0.0  # MAC text token mask ratio r_t (pre-training only); top-level knob
    itm_hard_negatives: bool = True

    def __post_init__(self) -> None:
        _check(
            0 < self.temp_min <= self.temp_init <= self.temp_max,
            "model.temp_init",
            self.temp_init,
            f"must lie in [temp_min={self.temp_min}, temp_max={self.temp_max}]",
        )
        _check(0 <= self.mask_video < 1, "mask_video", self.mask_video, "must be in [0, 1)")
        _check(0 <= self.mask_text < 1, "mask_text", self.mask_text, "must be in [0, 1)")


@dataclass(frozen=True)
class FetchConfig:
    """How URL lists (WebVid, CC3M) are fetched at the paper scale (rap/data/fetch.py): each
    input shard of ``shard_size`` URLs is one status parquet and one output folder; shards run
    in ``processes`` processes of ``threads`` threads each (img2dataset's and video2dataset's
    processes x threads). An item that answers 4xx/5xx, times out or does not decode is recorded
    and skipped, never fatal."""

    processes: int = 4
    threads: int = 16
    shard_size: int = 1000
    timeout_s: float = 30.0
    retries: int = 1  # extra attempts for a transient failure (timeout, 408/429/5xx)
    # img2dataset: the field's tool, from its own venv (.tools/img2dataset, `make tools`);
    # builtin: rap/data/fetch.py (same contract; no extra environment)
    cc3m_tool: Literal["img2dataset", "builtin"] = "img2dataset"

    def __post_init__(self) -> None:
        _check(self.processes >= 1, "data.fetch.processes", self.processes, "must be >= 1")
        _check(self.threads >= 1, "data.fetch.threads", self.threads, "must be >= 1")
        _check(self.shard_size >= 1, "data.fetch.shard_size", self.shard_size, "must be >= 1")
        _check(self.timeout_s > 0, "data.fetch.timeout_s", self.timeout_s, "must be > 0")
        _check(self.retries >= 0, "data.fetch.retries", self.retries, "must be >= 0")


@dataclass(frozen=True)
class DatasetFetchConfig:
    """Per dataset (``data.<dataset>``): the share of its listed items that must arrive for
    ``rap download`` to succeed (dead links are certain: WebVid's and CC3M's URLs rot)."""

    min_success: float = 1.0
    # WebVid, CC3M: where their URL list is fetched from when it is not already in raw/<dataset>/
    # (null: the publisher's URL; WebVid's has answered 404 since 2024: README "Paper-scale data")
    list_url: str | None = None

    def __post_init__(self) -> None:
        _check(0 <= self.min_success <= 1, "data.<dataset>.min_success", self.min_success, "must be in [0, 1]")


@dataclass(frozen=True)
class DataConfig:
    root: str = "data"  # pipeline outputs: raw/<dataset>/, index/, frames/
    # synthetic: `rap download` generates the embedded corpus in each dataset's own format;
    # public: fetch the real datasets from their publishers.
    source: Literal["synthetic", "public"] = "public"
    frames_train: int = 4  # K sparsely sampled frames (paper 5.4); top-level knob `frames`
    frames_eval: int = 8
    sampling_train: Sampling = "rand"
    sampling_eval: Sampling = "uniform"
    image_size: int = 256
    # loader workers; also caps `rap extract`'s process pool (at most the CPUs the job has; 0: one
    # process) and sets the CPUs the Snakemake extract job reserves
    num_workers: int = 4
    # `rap extract --shard I/N` jobs of the Snakemake workflow per dataset (rap/data/extract.py);
    # 1: one job, unsharded
    extract_shards: int = 1
    frame_store: bool = True  # train from pre-extracted frames rather than decoding videos
    store_fps: float = 2.0  # frame rate of the pre-extracted store
    # npy: raw uint8 frames, memory-mapped (fastest, ~10 MB per 15 s clip at 256 px); jpeg: one
    # JPEG per frame in one file per clip (~17x smaller at q90; rap/data/store.py, bench_loader.py);
    # wds / wds-npy: the jpeg / npy clips packed into tar shards of wds_shard_clips clips (thousands
    # of files at the paper scale instead of millions)
    store_format: Literal["npy", "jpeg", "wds", "wds-npy"] = "wds"
    # clips per tar shard (wds formats): the manifest positions [c * n, (c + 1) * n) make tar c.
    # Not listed in dvc.yaml's extract params (the embedded scale does not write it; listing it
    # would need it there and make the committed dvc.lock stale): `rap extract` itself notices a
    # change and redoes the tars
    wds_shard_clips: int = 1000
    store_jpeg_quality: int = 90
    max_bad_fraction: float = 0.05  # stop when more of a dataset than this is unusable
    check_sizes: bool = False  # verify split sizes against the published numbers
    download_limit: int | None = None  # take a small real subset (smoke runs)
    synthetic_seed: int = 0
    synthetic_scale: float = 1.0  # multiplies every split size of the embedded corpus
    # the controlled experiment's generator knobs (controlled/dvc.yaml; rap.data.synthetic.SceneLook):
    # 1.0 = the default corpus
    synthetic_object_scale: float = 1.0  # captioned objects' radii
    synthetic_texture: float = 1.0  # background stripes and noise (0 = uniform)
    hflip: bool = False  # flip augmentation (swaps left/right in the caption); see data/transforms.py
    fetch: FetchConfig = field(default_factory=FetchConfig)
    webvid: DatasetFetchConfig = field(default_factory=DatasetFetchConfig)
    cc3m: DatasetFetchConfig = field(default_factory=DatasetFetchConfig)
    msrvtt: DatasetFetchConfig = field(default_factory=DatasetFetchConfig)
    didemo: DatasetFetchConfig = field(default_factory=DatasetFetchConfig)
    msvd: DatasetFetchConfig = field(default_factory=DatasetFetchConfig)
    lsmdc: DatasetFetchConfig = field(default_factory=DatasetFetchConfig)

    def min_success(self, dataset: str) -> float:
        """``data.<dataset>.min_success``."""
        return getattr(self, dataset).min_success

    def __post_init__(self) -> None:
        _check(self.frames_train >= 1, "frames", self.frames_train, "must be >= 1")
        _check(self.frames_eval >= 1, "data.frames_eval", self.frames_eval, "must be >= 1")
        _check(0 <= self.max_bad_fraction <= 1, "data.max_bad_fraction", self.max_bad_fraction, "must be in [0, 1]")
        _check(self.num_workers >= 0, "data.num_workers", self.num_workers, "must be >= 0")
        _check(self.extract_shards >= 1, "data.extract_shards", self.extract_shards, "must be >= 1")
        formats = ("npy", "jpeg", "wds", "wds-npy")
        _check(self.store_format in formats, "data.store_format", self.store_format, f"must be one of {formats}")
        _check(self.wds_shard_clips >= 1, "data.wds_shard_clips", self.wds_shard_clips, "must be >= 1")
        _check(
            1 <= self.store_jpeg_quality <= 100,
            "data.store_jpeg_quality",
            self.store_jpeg_quality,
            "must be in [1, 100]",
        )
        _check(self.synthetic_scale > 0, "data.synthetic_scale", self.synthetic_scale, "must be > 0")
        _check(
            0 < self.synthetic_object_scale <= 3,
            "data.synthetic_object_scale",
            self.synthetic_object_scale,
            "must be in (0, 3]",
        )
        _check(
            0 <= self.synthetic_texture <= 10, "data.synthetic_texture", self.synthetic_texture, "must be in [0, 10]"
        )


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and schedule (paper 5.4): AdamW, lr warmed from ``warmup_lr`` to ``lr`` over
    ``warmup_steps`` iterations, then decayed (``step``: lr * decay_rate**epoch as in the
    released code; ``cosine``)."""

    lr: float = 3e-4
    warmup_lr: float = 1e-6
    warmup_steps: int = 3000
    schedule: LrSchedule = "step"
    decay_rate: float = 0.9
    min_lr: float = 0.0
    weight_decay: float = 0.05  # not applied to norms, biases or the temperature
    epochs: int = 30
    batch_size: int = 30  # per rank
    grad_accum: int = 1
    clip_grad: float = 1.0
    precision: Precision = "auto"
    tf32: bool = False  # fp32 matmuls on TF32 tensor cores (Ampere or newer GPUs; rap.precision)
    grad_checkpointing: bool = False
    # DDP's gradient all-reduce: fp32 (DDP's own), or bf16 (torch's bf16_compress_hook: each
    # bucket cast to bf16 for the all-reduce, half the bytes; rap.training.loop)
    grad_comm: GradComm = "fp32"
    checkpoint_every: int = 1000  # steps
    log_every: int = 10

    def __post_init__(self) -> None:
        _check(self.lr > 0, "lr", self.lr, "must be > 0")
        _check(self.epochs >= 1, "epochs", self.epochs, "must be >= 1")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        _check(self.grad_accum >= 1, "grad_accum", self.grad_accum, "must be >= 1")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        _check(self.checkpoint_every >= 1, "checkpoint_every", self.checkpoint_every, "must be >= 1")


@dataclass(frozen=True)
class ProcessLayout:
    """Where a training run's processes go: ``nodes`` machines, each running one torchrun with
    one process per GPU (``gpus_per_node``), or ``cpu_procs_per_node`` gloo processes when
    ``gpus_per_node`` is 0. rap.launch turns a layout into the torchrun command line."""

    nodes: int = 1
    gpus_per_node: int = 0  # 0 = train on the CPU
    cpu_procs_per_node: int = 1  # CPU (gloo) processes per node; only when gpus_per_node is 0

    def __post_init__(self) -> None:
        _check(self.nodes >= 1, "nodes", self.nodes, "must be >= 1")
        _check(self.gpus_per_node >= 0, "gpus_per_node", self.gpus_per_node, "must be >= 0")
        _check(self.cpu_procs_per_node >= 1, "cpu_procs_per_node", self.cpu_procs_per_node, "must be >= 1")
        _check(
            self.gpus_per_node == 0 or self.cpu_procs_per_node == 1,
            "cpu_procs_per_node",
            self.cpu_procs_per_node,
            f"applies to CPU training only, but gpus_per_node={self.gpus_per_node}",
        )

    @property
    def procs_per_node(self) -> int:
        return self.gpus_per_node or self.cpu_procs_per_node

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation of one pre-training source or fine-tuning task
    (rap/data/transforms.py). ``view``: "crop" (one random resized crop of area ``crop_scale``
    shared by the K frames), "squash" (the whole frame resized to a square, no crop),
    "squash_crop" (squashed, then the random resized crop: the release's LSMDC) or "centre"
    (short side + centre crop); ``flip``: horizontal flip with probability 1/2 (the
    caption's left/right swapped); ``randaugment``: RandAugment(2, 5) ops on every frame
    (the release's CC3M, transform/randaugment.py)."""

    view: Literal["crop", "squash", "squash_crop", "centre"] = "crop"
    crop_scale: tuple[float, float] = (0.5, 1.0)
    flip: bool = False
    randaugment: bool = False

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale if len(self.crop_scale) == 2 else (0.0, 0.0)
        _check(
            0 < lo <= hi <= 1, "augment.crop_scale", list(self.crop_scale), "must be [lo, hi] with 0 < lo <= hi <= 1"
        )


@dataclass(frozen=True)
class PretrainConfig(ProcessLayout):
    sources: tuple[str, ...] = PRETRAIN_SOURCES
    source_weights: tuple[float, ...] = (1.0, 1.0)  # probability of each source per step (mixing: weighted)
    # How an epoch mixes the sources: "weighted" draws each step's source with source_weights
    # (an epoch is sum(sizes) / batch steps, some samples of a source unseen, others twice);
    # "exhaust" visits every sample of every source once an epoch, the steps of the sources
    # in a random order (the release's MetaLoader, meta_dataloader.py:44-46).
    mixing: Literal["weighted", "exhaust"] = "weighted"
    augment: Mapping[str, AugmentConfig] = field(default_factory=dict)  # per source
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        for s in self.sources:
            _check(s in PRETRAIN_SOURCES, "pretrain.sources", s, f"must be one of {PRETRAIN_SOURCES}")
        for s in self.augment:
            _check(s in PRETRAIN_SOURCES, "pretrain.augment", s, f"must be one of {PRETRAIN_SOURCES}")
        _check(
            len(self.source_weights) == len(self.sources),
            "pretrain.source_weights",
            self.source_weights,
            "needs one weight per source",
        )


@dataclass(frozen=True)
class FinetuneConfig(ProcessLayout):
    tasks: tuple[str, ...] = FINETUNE_TASKS
    epochs: Mapping[str, int] = field(
        default_factory=lambda: {"msrvtt-7k": 30, "msrvtt-9k": 10, "didemo": 30, "msvd": 30, "lsmdc": 30}
    )
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=1e-5, warmup_steps=0, schedule="cosine", batch_size=15, precision="fp32")
    )
    loss: LossConfig = field(
        default_factory=lambda: LossConfig(lm_weight=0.0, intra_video_weight=0.0, intra_text_weight=0.0)
    )
    # Training text length per task, overriding model.text.max_len_train (30, for one-sentence
    # captions). DiDeMo trains on whole paragraphs: 30 tokens would cut ~60 % of them (median
    # 34 WordPiece tokens on the authors' val/test files), 64 cuts ~1 %, and 64 is what the
    # reference implementations use for DiDeMo (DESIGN.md "Text length").
    max_len_train: Mapping[str, int] = field(default_factory=lambda: {"didemo": 64})
    # Tasks whose epoch is one sample per video with a caption drawn at random (the release's
    # MSVD: 1,200 samples an epoch, MSVD_dataset.py:169), instead of one sample per caption.
    one_caption_per_video: tuple[str, ...] = ()
    # Augmentation of each task's training clips (missing: the default AugmentConfig).
    augment: Mapping[str, AugmentConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        for t in (*self.one_caption_per_video, *self.augment):
            _check(t in FINETUNE_TASKS, "finetune.one_caption_per_video/augment", t, f"must be one of {FINETUNE_TASKS}")
        for t in self.tasks:
            _check(t in FINETUNE_TASKS, "finetune.tasks", t, f"must be one of {FINETUNE_TASKS}")
            _check(t in self.epochs, "finetune.epochs", t, "has no epoch count")
        for t, n in self.max_len_train.items():
            _check(t in FINETUNE_TASKS, "finetune.max_len_train", t, f"must be one of {FINETUNE_TASKS}")
            _check(4 <= n <= 512, f"finetune.max_len_train.{t}", n, "must be in [4, 512]")


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 64
    itm_rerank_k: int = 128  # 0 = ITC ranking only
    zero_shot: tuple[str, ...] = DOWNSTREAM_DATASETS
    # rap: rap's evaluation (rap.evaluation); release: the authors' evaluation exactly
    # (rap.release.recipe; the differences are listed in DESIGN.md)
    recipe: EvalRecipe = "rap"
    # the encoders' autocast (rap.precision.evaluation_dtype: auto = bf16 where native, else
    # fp32); ITM re-ranking runs in half precision on any GPU whatever this says
    precision: Precision = "fp32"
    tf32: bool = False

    def __post_init__(self) -> None:
        _check(
            self.recipe != "release" or self.itm_rerank_k > 0,
            "evaluate.itm_rerank_k",
            self.itm_rerank_k,
            "must be > 0 with evaluate.recipe: release (the release always re-ranks its top k; it used 128)",
        )
        _check(
            self.precision != "fp16",
            "evaluate.precision",
            self.precision,
            "fp16 has no scaler here: use auto, bf16 or fp32",
        )


@dataclass(frozen=True)
class CpuConfig:
    """CPU kernels and threads (rap/cpu_kernels.py): ``avx2`` pins every library's instruction
    set so that a CPU run's bytes do not depend on the host; ``native`` uses the host's best."""

    kernels: CpuKernels = "native"
    threads: int | None = None  # OMP_NUM_THREADS where the environment does not set it; null: torch's default

    def __post_init__(self) -> None:
        _check(self.threads is None or self.threads >= 1, "cpu.threads", self.threads, "must be null or >= 1")


@dataclass(frozen=True)
class ScaleConfig:
    """Everything that differs between the embedded default and the paper scale."""

    datasets: tuple[str, ...] = ALL_DATASETS
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    deterministic: Deterministic = "error"  # overridden by the RAP_DETERMINISTIC environment variable
    cpu: CpuConfig = field(default_factory=CpuConfig)

    def __post_init__(self) -> None:
        for d in self.datasets:
            _check(d in ALL_DATASETS, "datasets", d, f"must be one of {ALL_DATASETS}")
        for d in self.evaluate.zero_shot:
            _check(d in self.datasets, "evaluate.zero_shot", d, f"is not in datasets={list(self.datasets)}")
        for t in self.finetune.tasks:
            _check(
                FINETUNE[t].dataset in self.datasets,
                "finetune.tasks",
                t,
                f"needs dataset {FINETUNE[t].dataset!r} in datasets={list(self.datasets)}",
            )


def finetune_text_len(cfg: ScaleConfig, task: str) -> int:
    """Tokens a fine-tuning caption of ``task`` keeps: ``finetune.max_len_train[task]`` when
    set, else ``model.text.max_len_train``."""
    return cfg.finetune.max_len_train.get(task, cfg.model.text.max_len_train)


@dataclass(frozen=True)
class Knob:
    """A top-level ablation knob of params.yaml: what ``dvc exp run -S name=value`` sets.

    Declared once here; config loading, ablation run names, validation and the knob logging
    (MLflow, resume, evaluation) all read :data:`KNOBS`."""

    name: str  # top-level key in params.yaml (and MLflow param name)
    hint: Any  # type the value is checked against
    path: str  # where it lands in the scale block (ScaleConfig), dotted
    reference: Any  # the paper's main setting (section 5.4)
    run_prefix: str  # its name in ablation run names: "<run_prefix>-<value>"


KNOBS: tuple[Knob, ...] = (
    Knob("lambda", float, "pretrain.loss.racl_lambda", 1.0, "lambda"),  # eq. (10), Table 7
    Knob("frames", int, "data.frames_train", 4, "frames"),  # K, Table 6
    Knob("racl", RaclDirection, "pretrain.loss.racl", "both", "racl"),  # eq. (9) terms, Table 5
    # paper eqs. 4-8 or the release's softmax weighting (Table 9)
    Knob("racl_variant", RaclVariant, "pretrain.loss.racl_variant", "paper", "variant"),
    # gradient through w = 1 - redundancy (Table 9); the paper calls the weights learnable
    Knob("racl_weight_grad", bool, "pretrain.loss.racl_weight_grad", True, "weightgrad"),
    Knob("mask_video", float, "model.mask_video", 0.0, "mask"),  # MAC r_v, Table 8
    Knob("mask_text", float, "model.mask_text", 0.0, "masktext"),  # MAC r_t
)
KNOB_BY_NAME: Mapping[str, Knob] = types.MappingProxyType({k.name: k for k in KNOBS})
KNOB_BY_RUN_PREFIX: Mapping[str, Knob] = types.MappingProxyType({k.run_prefix: k for k in KNOBS})
# The paper's main setting: every ablation run changes exactly one knob of it.
REFERENCE_KNOBS: Mapping[str, Any] = types.MappingProxyType({k.name: k.reference for k in KNOBS})
SEED_RUN_PREFIX = "seed"  # "<ablation>+seed-<N>": the same run with another seed


def split_ablation_name(name: str) -> tuple[str, int | None]:
    """``"racl-none+seed-2"`` -> ``("racl-none", 2)``; ``"seed-1"`` -> ``("", 1)`` (the main
    setting with seed 1); ``"lambda-2.0"`` -> ``("lambda-2.0", None)``."""
    base, plus, seed_part = name.partition("+")
    if not plus and base.startswith(f"{SEED_RUN_PREFIX}-"):
        base, seed_part = "", base
    if not seed_part:
        return base, None
    prefix, sep, raw = seed_part.partition("-")
    if prefix != SEED_RUN_PREFIX or not sep or not raw.isdigit():
        raise ConfigError(f"invalid ablation run name {name!r}: expected <knob>-<value>[+seed-<N>]")
    return base, int(raw)


def ablation_overrides(name: str) -> dict[str, Any]:
    """Settings of an ablation run: the paper's main setting with one knob changed, and
    optionally another seed.

    ``"lambda-2.0"`` -> ``{"lambda": 2.0, "frames": 4, "racl": "both", ...}``;
    ``"racl-none+seed-1"`` -> ``{..., "racl": "none", "seed": 1}``; ``"seed-2"`` -> the main
    setting with ``"seed": 2``. Ablation runs do not inherit the top-level knobs, so
    ``dvc exp run -S lambda=2.0`` leaves them alone.
    """
    base, seed = split_ablation_name(name)
    out: dict[str, Any] = dict(REFERENCE_KNOBS)
    if base:
        prefix, sep, raw_value = base.partition("-")
        if not sep or prefix not in KNOB_BY_RUN_PREFIX:
            raise ConfigError(
                f"invalid ablation run name {name!r}: expected <knob>-<value> with knob in {sorted(KNOB_BY_RUN_PREFIX)}"
            )
        knob = KNOB_BY_RUN_PREFIX[prefix]
        value = _coerce(yaml.safe_load(raw_value), knob.hint, f"ablations[{name}]", "ablation")
        if value == knob.reference:
            raise ConfigError(
                f"ablation run {name!r} equals the paper's main setting; its row is read "
                "from the main run, so leave it out of `ablations`"
            )
        out[knob.name] = value
    if seed is not None:
        out["seed"] = seed
    return out


@dataclass(frozen=True)
class Params:
    scale: Literal["embedded", "paper"]
    seed: int
    cfg: ScaleConfig  # the selected scale with the top-level knobs merged in
    knobs: Mapping[str, Any] = field(default_factory=dict)  # resolved top-level knobs
    ablations: tuple[str, ...] = ()  # ablation run names (dvc.yaml foreach)
    seed_runs: tuple[str, ...] = ()  # seed repeats of Tables 5 and 9 (seeds/dvc.yaml foreach)
    train_recipe: TrainRecipe = "paper"  # the training objective: the paper's or the release's

    def to_flat_dict(self) -> dict[str, Any]:
        """Resolved config as ``a.b.c: value`` (what MLflow logs as params)."""
        flat: dict[str, Any] = {"scale": self.scale, "seed": self.seed, "train_recipe": self.train_recipe, **self.knobs}
        _flatten(dataclasses.asdict(self.cfg), "", flat)
        return {key: _unshared(value) for key, value in flat.items()}


def _unshared(value: Any) -> Any:
    """``value`` rebuilt so that no two places hold the same str/list/tuple/dict object.

    Checkpoints pickle this dict, and pickle writes an object met twice as a back-reference: the
    bytes would depend on whether a YAML parse, an override or an interned literal happened to
    share one string between two keys (the same run from ``rap pretrain --set`` and from Python
    wrote different checkpoint bytes). Fresh objects make the bytes a function of the values."""
    if isinstance(value, dict):
        return {_unshared(k): _unshared(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_unshared(v) for v in value)
    if type(value) is str and len(value) > 1:  # 0/1-character strings are interpreter singletons
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass")
    return value


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------

TOP_LEVEL_KNOBS = ("scale", "seed", "train_recipe", *KNOB_BY_NAME, "ablations", "seed_runs")
SCALES = ("embedded", "paper")


def load_params(path: str | Path = "params.yaml", overrides: Mapping[str, Any] | None = None) -> Params:
    """Read and validate ``params.yaml``; ``overrides`` replace top-level knobs or dotted
    paths inside the selected scale (``{"lambda": 2.0, "pretrain.optim.epochs": 1}``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file")
    with path.open(encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must hold a mapping at the top level")
    return params_from_dict(raw, overrides, source=str(path))


def params_from_dict(
    raw: Mapping[str, Any], overrides: Mapping[str, Any] | None = None, source: str = "params"
) -> Params:
    raw = _deep_copy(raw)
    for key in raw:
        if key not in TOP_LEVEL_KNOBS + SCALES:
            raise ConfigError(f"{source}: unknown top-level key {key!r}; expected one of {TOP_LEVEL_KNOBS + SCALES}")
    for key, value in (overrides or {}).items():
        if key in TOP_LEVEL_KNOBS:
            raw[key] = value
        else:
            scale = raw.get("scale", "embedded")
            _set_dotted(raw.setdefault(scale, {}), key, value, source)
    scale = raw.get("scale", "embedded")
    _check(scale in SCALES, "scale", scale, f"must be one of {SCALES}")
    block = raw.get(scale)
    if not isinstance(block, dict):
        raise ConfigError(f"{source}: scale {scale!r} selected but there is no {scale!r} block")
    inherited = sorted(set((block.get("finetune") or {}).get("loss") or {}) & set(FINETUNE_INHERITED_LOSS))
    if inherited:
        raise ConfigError(
            f"{source}: '{scale}.finetune.loss.{inherited[0]}' cannot be set: fine-tuning takes it from "
            f"pretrain.loss (rap.config.finetune_loss); set '{scale}.pretrain.loss.{inherited[0]}' instead"
        )
    cfg = _build(ScaleConfig, block, prefix=scale, source=source)
    cfg = _apply_knobs(cfg, raw, source)
    recipe = _coerce(raw.get("train_recipe", "paper"), TrainRecipe, "train_recipe", source)
    cfg = apply_train_recipe(cfg, recipe)
    seed = raw.get("seed", 0)
    _check(
        isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0,
        "seed",
        seed,
        "must be a non-negative integer",
    )
    ablations = _coerce(raw.get("ablations", []), tuple[str, ...], "ablations", source)
    seed_runs = _coerce(raw.get("seed_runs", []), tuple[str, ...], "seed_runs", source)
    for key, names in (("ablations", ablations), ("seed_runs", seed_runs)):
        for name in names:
            ablation_overrides(name)  # validates the name
        _check(len(set(names)) == len(names), key, list(names), "lists a run twice")
    _check(
        not ablations or "racl-none" in ablations,
        "ablations",
        list(ablations),
        "must include racl-none: Table 5 and Figure 3 compare with the model trained without RaCL",
    )
    for name in seed_runs:
        _check(split_ablation_name(name)[1] is not None, "seed_runs", name, "needs a +seed-<N> part (or seed-<N>)")
    knobs = {k.name: _get_dotted(cfg, k.path) for k in KNOBS}
    return Params(
        scale=scale,
        seed=seed,
        cfg=cfg,
        knobs=types.MappingProxyType(knobs),
        ablations=ablations,
        seed_runs=seed_runs,
        train_recipe=recipe,
    )


def _apply_knobs(cfg: ScaleConfig, raw: Mapping[str, Any], source: str) -> ScaleConfig:
    """Top-level knobs win over the scale block: they are what ``dvc exp run -S`` sets."""
    for knob in KNOBS:
        if knob.name in raw:
            cfg = _replace_dotted(cfg, knob.path, _coerce(raw[knob.name], knob.hint, knob.name, source))
    return dataclasses.replace(
        cfg, finetune=dataclasses.replace(cfg.finetune, loss=finetune_loss(cfg.pretrain.loss, cfg.finetune.loss))
    )


# Fine-tuning keeps the RaCL of the pre-trained model it starts from (paper 5.2 fine-tunes
# with the same objective's retrieval terms): these fields always come from pretrain.loss.
FINETUNE_INHERITED_LOSS = (
    "racl_lambda",
    "racl",
    "racl_variant",
    "racl_weight_grad",
    "racl_weight_floor",
    "racl_double_normalise",
    "racl_locals",
)


def finetune_loss(pretrain: LossConfig, finetune: LossConfig) -> LossConfig:
    """Fine-tuning's loss settings: its own block, with RaCL's settings taken from pre-training
    (:data:`FINETUNE_INHERITED_LOSS`); the one place fine-tuning's objective is derived."""
    return dataclasses.replace(finetune, **{f: getattr(pretrain, f) for f in FINETUNE_INHERITED_LOSS})


# ``train_recipe: release``: the objective of the authors' release (caskcsg/VLP, RaP/models/
# rap_pretrain.py:146-178 and rap_retrieval.py:112-143), for pre-training and fine-tuning alike:
# ITC against a momentum queue with distillation; i2i and t2t against [momentum; queue];
# loss_ita = (i2t + t2i + i2i + t2t) / 4 + the two local terms (so itc, whose value is the mean
# of i2t and t2i, weighs 1/2 and i2i, t2t 1/4 each); the local terms weighted by softmax(max
# similarity / tau), divided again by their count, on momentum local features (DESIGN.md
# "Table of record"). queue_size, momentum_m and distill_alpha keep their values (the release's).
RELEASE_LOSS: Mapping[str, Any] = types.MappingProxyType(
    {
        "momentum": True,
        "racl_variant": "official",
        "racl_double_normalise": True,
        "racl_locals": "momentum",
        "racl_weight_grad": True,
        "intra_queue": True,
        "queue_init": "random",
        "itc_weight": 0.5,
        "intra_video_weight": 0.25,
        "intra_text_weight": 0.25,
    }
)
# Per stage: pre-training's momentum encoders see the augmented view (rap_pretrain.py:127) and
# alpha ramps over 2 epochs (pretrain.py:47); fine-tuning's see the training clip itself
# (rap_retrieval.py:91), alpha ramps over the first epoch (retrieval.py:45-47), no LM.
RELEASE_PRETRAIN_LOSS: Mapping[str, Any] = types.MappingProxyType(
    {"momentum_video_view": "second", "distill_ramp_epochs": 2.0}
)
RELEASE_FINETUNE_LOSS: Mapping[str, Any] = types.MappingProxyType(
    {"momentum_video_view": "first", "distill_ramp_epochs": 1.0, "lm_weight": 0.0}
)


def apply_train_recipe(cfg: ScaleConfig, recipe: str) -> ScaleConfig:
    """``cfg`` trained with ``recipe``: "paper" leaves it as it is; "release" sets the release's
    objective (:data:`RELEASE_LOSS`) in pre-training and fine-tuning, over any knob."""
    if recipe == "paper":
        return cfg
    pre = dataclasses.replace(cfg.pretrain.loss, **RELEASE_LOSS, **RELEASE_PRETRAIN_LOSS)
    ft = dataclasses.replace(cfg.finetune.loss, **RELEASE_LOSS, **RELEASE_FINETUNE_LOSS)
    return dataclasses.replace(
        cfg,
        pretrain=dataclasses.replace(cfg.pretrain, loss=pre),
        finetune=dataclasses.replace(cfg.finetune, loss=finetune_loss(pre, ft)),
    )


def _get_dotted(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _replace_dotted(obj: Any, dotted: str, value: Any) -> Any:
    """A copy of the frozen dataclass tree ``obj`` with the field at ``dotted`` set to ``value``."""
    head, _, rest = dotted.partition(".")
    if not rest:
        return dataclasses.replace(obj, **{head: value})
    return dataclasses.replace(obj, **{head: _replace_dotted(getattr(obj, head), rest, value)})


# --------------------------------------------------------------------------------------
# Helpers: typed construction of nested frozen dataclasses from plain dicts
# --------------------------------------------------------------------------------------


# Keys of earlier params.yaml files and what replaced them (named in the unknown-key error).
RENAMED_KEYS = {"gpus": "renamed: set nodes and gpus_per_node instead"}


def _check(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"invalid value for {key!r}: {value!r} ({why})")


def _check_dropout(key: str, p: float | None) -> None:
    _check(p is None or 0 <= p < 1, key, p, "must be null (the model's own) or in [0, 1)")


def _build(cls: type, data: Any, prefix: str, source: str):
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: {prefix!r} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        hint = f" ({RENAMED_KEYS[unknown[0]]})" if unknown[0] in RENAMED_KEYS else ""
        raise ConfigError(f"{source}: unknown key '{prefix}.{unknown[0]}'{hint}; expected one of {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}"
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, key, source)
        else:
            kwargs[name] = _coerce(value, hint, key, source)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err} [in {prefix}]") from None


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check ``value`` against a type hint; ints are accepted for floats, lists for tuples."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    bad = ConfigError(f"{source}: invalid value for {key!r}: {value!r} (expected {_hint_name(hint)})")
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key, source)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: invalid value for {key!r}: {value!r} (must be one of {list(args)})")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError:
                pass
        raise bad
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        item = args[0] if args else Any
        return tuple(_coerce(v, item, f"{key}[{i}]", source) for i, v in enumerate(value))
    if origin in (collections.abc.Mapping, dict) or hint is dict:
        if not isinstance(value, Mapping):
            raise bad
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, key, source): _coerce(v, vt, f"{key}.{k}", source) for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise ConfigError(f"{source}: {key!r} has an unsupported type {hint!r}")


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _set_dotted(block: dict, dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    node = block
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: cannot override {dotted!r}: {part!r} is not a mapping")
    node[parts[-1]] = value


def _deep_copy(d: Any) -> Any:
    if isinstance(d, Mapping):
        return {k: _deep_copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deep_copy(v) for v in d]
    return d


def _flatten(d: Mapping[str, Any], prefix: str, out: dict[str, Any]) -> None:
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            _flatten(v, key + ".", out)
        else:
            out[key] = v
