"""Video encoder (paper 3.2): a per-frame timm ViT, MAC masking, frame averaging.

Frames are encoded independently (no temporal modelling, as in the paper and its release).
With MAC (``mask_ratio > 0``, training only) each frame drops a random subset of its patches
right after patch + position embedding; [CLS] is always kept and only the visible tokens go
through the transformer blocks, which is where MAC's saving comes from. The outputs are then
averaged over frames position by position (:func:`rap.model.masking.frame_average`).

Pixels. The loaders ship uint8 frames (4x fewer bytes than float32 through worker queues,
pinned memory and the host-to-device copy); the encoder normalises them on whatever device
it runs on (:func:`normalize_frames`, the one place pixels are normalised: training,
evaluation and the figure all go through here), with the mean/std of the model setting
``model.vision.pixel_mean`` / ``pixel_std``: ImageNet's by default (timm's DeiT weights),
CLIP's for a checkpoint imported from the authors' release (their loaders use CLIP's values,
not ImageNet's). A floating-point input is taken as already normalised (synthetic tensors in
tests and benchmarks).
"""

from __future__ import annotations

import functools

import timm
import torch
from timm.models._manipulate import checkpoint_seq
from torch import nn

from rap.config import IMAGENET_MEAN, IMAGENET_STD, ConfigError, VisionConfig
from rap.model.masking import frame_average, random_masking
from rap.model.weights import load_timm_weights, timm_weights_file

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "VideoEncoder", "normalize_frames"]


@functools.lru_cache(maxsize=None)
def _pixel_affine(
    device: torch.device, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), float32 (3, 1, 1) on ``device``: normalised = pixel * scale - shift.
    Made once per device and statistics, so a step copies no constant to the GPU; never
    inference tensors (an evaluation may come first in a process that trains afterwards)."""
    with torch.inference_mode(False):
        std = torch.tensor(std, dtype=torch.float32)
        mean = torch.tensor(mean, dtype=torch.float32)
        scale, shift = 1.0 / (255.0 * std), mean / std  # float32 arithmetic
        return scale.view(3, 1, 1).to(device), shift.view(3, 1, 1).to(device)


def normalize_frames(
    video: torch.Tensor, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
) -> torch.Tensor:
    """uint8 pixels ``(..., 3, H, W)`` -> float32 ``(x / 255 - mean) / std`` on ``video``'s
    device, as one multiply and one subtract per element (float32 constants; on the same input
    this equals the former float normalisation in the loader workers)."""
    if video.dtype != torch.uint8:
        raise TypeError(f"normalize_frames expects uint8 pixels, got {video.dtype}")
    if video.dim() < 3 or video.shape[-3] != 3:
        raise ValueError(f"normalize_frames expects (..., 3, H, W), got shape {tuple(video.shape)}")
    scale, shift = _pixel_affine(video.device, tuple(mean), tuple(std))
    return video.float() * scale - shift


class VideoEncoder(nn.Module):
    """(B, K, 3, H, W) frames -> frame-averaged tokens (B, 1+N, W) and patch visibility (B, N)."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        overrides = {
            k: getattr(cfg, k) for k in ("patch_size", "embed_dim", "depth", "num_heads") if getattr(cfg, k) is not None
        }
        if cfg.dropout is not None:
            overrides.update(attn_drop_rate=cfg.dropout, proj_drop_rate=cfg.dropout, pos_drop_rate=cfg.dropout)
        try:
            self.vit = timm.create_model(
                cfg.timm_name,
                pretrained=False,
                img_size=cfg.img_size,
                num_classes=0,
                dynamic_img_size=False,
                drop_path_rate=cfg.drop_path_rate,
                **overrides,
            )
        except (RuntimeError, OSError) as err:
            raise ConfigError(f"model.vision.timm_name: cannot build timm model {cfg.timm_name!r}: {err}") from err
        if cfg.pretrained:
            # timm's own loading, position embedding resampled to img_size (paper scale: 14x14 at
            # 224 px -> 16x16 at 256 px), every weight checked (rap/model/weights.py)
            load_timm_weights(self.vit, timm_weights_file(cfg))
        if getattr(self.vit, "cls_token", None) is None or self.vit.num_prefix_tokens != 1:
            raise ConfigError(
                f"model.vision.timm_name: {cfg.timm_name!r} must be a ViT with exactly one "
                "[CLS] token and no register tokens (P_cls is the video embedding)"
            )
        self.width: int = self.vit.embed_dim
        self.num_patches: int = self.vit.patch_embed.num_patches
        self.img_size = cfg.img_size
        self.pixel_mean, self.pixel_std = tuple(cfg.pixel_mean), tuple(cfg.pixel_std)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.vit.set_grad_checkpointing(enable)

    def forward(
        self, video: torch.Tensor, mask_ratio: float = 0.0, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``hidden (B, 1+N, W)`` ([CLS] first) and ``patch_mask (B, N)`` bool.

        ``video``: uint8 pixels (normalised here, :func:`normalize_frames`) or an already
        normalised float tensor. Masking only happens in training mode; evaluation always sees
        every patch.
        """
        x, keep_idx = self._encode_frames(video, mask_ratio, generator)
        b, k = video.shape[:2]
        patch_avg, patch_mask = frame_average(x[:, 1:], keep_idx, k, self.num_patches)
        cls_avg = x[:, 0].view(b, k, -1).mean(dim=1, keepdim=True)  # [CLS] is seen in every frame
        return torch.cat([cls_avg, patch_avg], dim=1), patch_mask

    def frame_tokens(self, video: torch.Tensor) -> torch.Tensor:
        """Every frame's output tokens, not averaged: (B, K, 1+N, W), every patch visible.
        The release's evaluation cross-attends to these (rap.release.recipe)."""
        x, _ = self._encode_frames(video, 0.0, None)
        return x.view(*video.shape[:2], *x.shape[1:])

    def _encode_frames(
        self, video: torch.Tensor, mask_ratio: float, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B*K, 1+n, W) tokens after the final norm (n = kept patches) and the kept indices."""
        if video.dim() != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be (B, K, 3, H, W), got shape {tuple(video.shape)}")
        if video.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"frames are {tuple(video.shape[-2:])} but model.vision.img_size={self.img_size}")
        if video.dtype == torch.uint8:
            video = normalize_frames(video, self.pixel_mean, self.pixel_std)
        vit = self.vit
        x = vit.patch_embed(video.flatten(0, 1))  # (B*K, N, W)
        x = vit._pos_embed(x)  # prepends [CLS], adds position embeddings
        x = vit.patch_drop(x)
        cls, patches = x[:, :1], x[:, 1:]
        keep_idx = None
        if self.training and mask_ratio > 0:
            patches, keep_idx = random_masking(patches, mask_ratio, generator)  # per frame
        x = vit.norm_pre(torch.cat([cls, patches], dim=1))
        if vit.grad_checkpointing and self.training:
            x = checkpoint_seq(vit.blocks, x)
        else:
            x = vit.blocks(x)
        return vit.norm(x), keep_idx
