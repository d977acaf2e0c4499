"""MAC mask sampling (masked-then-alignment): only visible tokens are encoded.

Video: :func:`random_masking` keeps ``int(T * (1 - ratio))`` tokens per row, chosen by the
argsort of uniform noise (MAE/FLIP). Applied to (B*K, N, C) patch tokens after the patch and
position embedding, so each frame gets its own random positions (MAC, Fig. 2) and every kept
token still knows where it came from. :func:`frame_average` then averages each position over
the frames in which it was visible (DESIGN.md, "MAC masking with frame averaging").

Text: :func:`mask_text` drops a fraction of the *content* tokens of each caption and re-packs
the survivors to the left. [CLS] is always kept (it carries T_cls), and so is [SEP], so the
masked caption keeps the tokenizer's ``[CLS] ... [SEP] [PAD]...`` structure; padding stays
padding. The batch is cut to the longest masked caption, so masking also saves compute.
"""

from __future__ import annotations

import torch


def num_kept(num_tokens: int, ratio: float) -> int:
    """Tokens kept of ``num_tokens`` at mask ratio ``ratio`` (FLIP: ``int(T * (1 - ratio))``, >= 1)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return max(1, int(num_tokens * (1.0 - ratio)))


def random_masking(
    x: torch.Tensor, ratio: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep a random subset of tokens of each row of ``x`` (B, T, C).

    Returns ``(visible (B, T_keep, C), keep_idx (B, T_keep))``; ``keep_idx`` holds the original
    positions in increasing order (order is irrelevant to a ViT once positions are embedded,
    sorting just makes the output easy to read and test).
    """
    if x.dim() != 3:
        raise ValueError(f"random_masking expects (B, T, C), got shape {tuple(x.shape)}")
    b, t, c = x.shape
    keep = num_kept(t, ratio)
    noise = torch.rand(b, t, device=x.device, generator=generator)
    keep_idx = noise.argsort(dim=1)[:, :keep].sort(dim=1).values
    visible = x.gather(1, keep_idx.unsqueeze(-1).expand(b, keep, c))
    return visible, keep_idx


def frame_average(
    tokens: torch.Tensor, keep_idx: torch.Tensor | None, num_frames: int, num_positions: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average per-frame patch outputs position by position (paper 3.2, P_n = 1/K sum_k Pf_n^k).

    ``tokens`` (B*K, T, W) are the encoder outputs of the kept patches (no [CLS]), ``keep_idx``
    (B*K, T) their positions (None = all N positions in order). Each position is averaged over
    the frames where it was visible; returns ``(avg (B, N, W), visible (B, N) bool)`` where
    positions visible in no frame are zero and False. Without masking this is the plain mean.
    """
    bk, t, w = tokens.shape
    if bk % num_frames:
        raise ValueError(f"{bk} frame rows are not a multiple of num_frames={num_frames}")
    b = bk // num_frames
    if keep_idx is None:
        avg = tokens.view(b, num_frames, t, w).mean(dim=1)
        return avg, torch.ones(b, t, dtype=torch.bool, device=tokens.device)
    idx = keep_idx.reshape(b, num_frames * t)
    sums = tokens.new_zeros(b, num_positions, w).scatter_add_(
        1, idx.unsqueeze(-1).expand(b, num_frames * t, w), tokens.reshape(b, num_frames * t, w)
    )
    counts = tokens.new_zeros(b, num_positions).scatter_add_(1, idx, tokens.new_ones(b, num_frames * t))
    return sums / counts.clamp(min=1.0).unsqueeze(-1), counts > 0


def mask_text(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    ratio: float,
    *,
    sep_id: int | None,
    pad_id: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop ``floor(n * ratio)`` of the n content tokens of each caption (MAC text masking).

    Content = real tokens other than position 0 ([CLS]) and ``sep_id`` ([SEP]). Survivors keep
    their order and are packed to the left, padding after them. Returns ``(input_ids,
    attention_mask)`` of the input shape (B, L): equal lengths on every rank keep the losses'
    all-gathers valid, and the text encoder is cheap next to the video encoder, where MAC's
    savings are.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"text mask ratio must be in [0, 1), got {ratio}")
    if ratio == 0.0:
        return input_ids, attention_mask
    real = attention_mask.bool()
    content = real.clone()
    content[:, 0] = False
    if sep_id is not None:
        content &= input_ids != sep_id
    n_content = content.sum(dim=1)
    n_drop = torch.floor(n_content.float() * ratio).long()
    # Rank content tokens by noise; the n_drop lowest-ranked ones go.
    noise = torch.rand(input_ids.shape, device=input_ids.device, generator=generator)
    noise = noise.masked_fill(~content, 2.0)  # non-content sorts last, never dropped
    rank = noise.argsort(dim=1).argsort(dim=1)
    keep = real & ~(content & (rank < n_drop.unsqueeze(1)))
    # Stable sort on "dropped" packs kept tokens left in their original order.
    order = (~keep).to(torch.int8).argsort(dim=1, stable=True)
    # Keep the input length (padding after the survivors): under DDP every rank's text must
    # have the same length for the all-gathers of the losses.
    new_mask = keep.gather(1, order)
    new_ids = input_ids.gather(1, order).masked_fill(~new_mask, pad_id)
    return new_ids, new_mask.to(attention_mask.dtype)
