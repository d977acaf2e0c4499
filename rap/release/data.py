"""The release's evaluation inputs (``evaluate.recipe: release``; points 3-5 of
:mod:`rap.release.recipe`): native frames at ``np.arange(0, vlen, vlen / K, dtype=int)``,
each frame squashed whole to ``img_size`` x ``img_size`` (MSVD: short side + centre crop, as
the release's MSVD loader), captions through ``pre_caption``.

Frames are read from the original video files (``data/raw``), not from the frame store: the
store keeps 2 fps, the release samples the native frame rate. The resize is Pillow's
antialiased bilinear (rap's transforms); the release resizes inside decord (FFmpeg's scaler):
a remaining difference, not measured (the release fixture's clips are decoded frames).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from rap.config import ScaleConfig
from rap.data import decode, transforms
from rap.data.datasets import EvalSet, EvalVideos, build_eval_set
from rap.release.recipe import pre_caption, release_frame_indices

__all__ = ["ReleaseEvalVideos", "build_release_eval_set", "squash_view"]

# Datasets whose release loader resizes the short side and centre-crops (the others squash).
_CROPPED = ("msvd",)


def squash_view(frames: np.ndarray, size: int) -> torch.Tensor:
    """The whole frame resized to ``size`` x ``size`` (aspect ratio not kept), uint8 (K, 3, H, W)."""
    h, w = frames.shape[1:3]
    return transforms.to_tensor(transforms._resize_box(frames, (0, 0, w, h), (size, size)))


class ReleaseEvalVideos(EvalVideos):
    """:class:`rap.data.datasets.EvalVideos` with the release's frame choice and resize."""

    def __init__(self, videos: EvalVideos, dataset: str) -> None:
        super().__init__(videos.clips, frames=videos.frames, sampling="uniform", image_size=videos.size)
        self.view = transforms.eval_view if dataset in _CROPPED else squash_view

    def read(self, i: int) -> torch.Tensor:
        rec = self.clips[i].record
        info = self.clips[i].info or decode.probe(rec.path, verify=False)
        idx = release_frame_indices(info.num_frames, self.frames)
        frames = decode.read_frames(rec.path, idx, None, src_size=(info.width, info.height))
        return self.view(frames, self.size)


def build_release_eval_set(dataset: str, split: str, cfg: ScaleConfig) -> EvalSet:
    """The evaluation split as the release reads it (same clips and ground truth as rap's)."""
    base = build_eval_set(dataset, split, cfg)
    texts = [pre_caption(t, 64) for t in base.texts]
    return dataclasses.replace(base, videos=ReleaseEvalVideos(base.videos, dataset), texts=texts)
