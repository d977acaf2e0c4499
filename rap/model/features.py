"""Feature containers (DESIGN.md "Tensor conventions") and the encode-then-project steps
shared by the online model and its momentum copy.

One linear projection per modality maps both the global ([CLS]) and the local (patch /
token) outputs into the shared ``embed_dim`` space, followed by L2 normalisation (paper 3.2;
the released code does the same).

Token convention: ``tokens`` are all positions after [CLS]; ``token_mask`` is True for every
real token among them, [SEP] included (the paper's "all non-[CLS] tokens", eqs. 6-7), and
False for padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rap.model.text import TextEncoder
from rap.model.video import VideoEncoder


@dataclass
class VideoFeatures:
    emb: torch.Tensor  # (B, D) P_cls
    patches: torch.Tensor  # (B, N, D) P_1..P_N
    patch_mask: torch.Tensor  # (B, N) bool, True = visible in at least one frame
    hidden: torch.Tensor  # (B, 1+N, W) frame-averaged ViT tokens (cross-attention input)
    hidden_mask: torch.Tensor  # (B, 1+N) bool, [CLS] always True

    def index(self, idx: torch.Tensor | slice) -> "VideoFeatures":
        """Rows ``idx`` of every field (e.g. the top-k videos of a query for ITM re-ranking)."""
        return VideoFeatures(
            self.emb[idx], self.patches[idx], self.patch_mask[idx], self.hidden[idx], self.hidden_mask[idx]
        )


@dataclass
class TextFeatures:
    emb: torch.Tensor  # (B, D) T_cls
    tokens: torch.Tensor  # (B, L-1, D) T_1..
    token_mask: torch.Tensor  # (B, L-1) bool, True = real non-[CLS] token ([SEP] included)
    hidden: torch.Tensor  # (B, L, H) last BERT layer


def project_video(
    vision: VideoEncoder,
    proj: nn.Linear,
    video: torch.Tensor,
    mask_ratio: float = 0.0,
    generator: torch.Generator | None = None,
) -> VideoFeatures:
    hidden, patch_mask = vision(video, mask_ratio, generator)
    z = F.normalize(proj(hidden), dim=-1)
    cls_visible = torch.ones_like(patch_mask[:, :1])
    return VideoFeatures(
        emb=z[:, 0],
        patches=z[:, 1:],
        patch_mask=patch_mask,
        hidden=hidden,
        hidden_mask=torch.cat([cls_visible, patch_mask], dim=1),
    )


def project_text(
    text: TextEncoder, proj: nn.Linear, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> TextFeatures:
    hidden = text(input_ids, attention_mask)
    z = F.normalize(proj(hidden), dim=-1)
    return TextFeatures(emb=z[:, 0], tokens=z[:, 1:], token_mask=attention_mask[:, 1:].bool(), hidden=hidden)
