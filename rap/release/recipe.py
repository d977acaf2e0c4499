"""``evaluate.recipe: release``: the authors' evaluation (their retrieval.py ``evaluation``), exactly.

Where it departs from rap's evaluation (:mod:`rap.evaluation`; DESIGN.md lists them too):

1. ITM input: the video-grounded encoder cross-attends to the K frames' tokens concatenated,
   K x (1+N) of them (:meth:`rap.model.video.VideoEncoder.frame_tokens`), not to the
   frame-averaged 1+N tokens it was trained on.
2. Score: inside each text's top k videos under ITC, ``ITM match logit (class 1) + cosine``
   (rap: ``logit1 - logit0 + cosine``); everything outside the top k is the constant -100
   (rap keeps the ITC order there); text-to-video only (the release leaves video-to-text
   unscored, so no v2t metrics are reported).
3. Frames: ``np.arange(0, vlen, vlen / K, dtype=int)`` on the clip's native frames (numpy's
   integer arange: the step is ``int(vlen / K)``), not segment centres from the frame store
   (:func:`release_frame_indices`).
4. Resize: the whole frame squashed to ``img_size`` x ``img_size`` (rap: short side + centre
   crop).
5. Captions: the release's ``pre_caption`` (:func:`pre_caption`): ``.!"()*#:;~`` become
   spaces, lower case, runs of spaces collapsed, at most 64 words (DiDeMo paragraphs: its
   sentences joined by ", "), padded to ``model.text.max_len_eval`` tokens.

Also as the release: ITC video embeddings are the per-frame [CLS] projections averaged, then
L2-normalised; the whole evaluation runs in fp32.

Points 3-5 concern the inputs (rap.data); points 1-2 and the scoring are
:func:`release_t2v`, checked against the release's own code on a fixture
(tests/test_release.py).
"""

from __future__ import annotations

import re
import types
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from rap import distributed as rdist

__all__ = ["OUTSIDE_TOP_K", "pre_caption", "release_frame_indices", "release_video_features", "release_t2v"]

OUTSIDE_TOP_K = -100.0  # the release's fill value for every score outside a text's top k


def pre_caption(caption: str, max_words: int = 64) -> str:
    """The release's caption cleaning (data/utils.py ``pre_caption``; max_words 64 at evaluation)."""
    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption)
    caption = caption.rstrip("\n").strip(" ")
    words = caption.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else caption


def release_frame_indices(num_frames: int, k: int) -> list[int]:
    """The release's evaluation sampling, ``np.arange(0, vlen, vlen / k, dtype=int)`` (its
    datasets' 'uniform' strategy), on a clip's ``num_frames`` native frames."""
    if num_frames < 1 or k < 1:
        raise ValueError(f"release_frame_indices: need num_frames >= 1 and k >= 1, got {num_frames}, {k}")
    return np.arange(0, num_frames, num_frames / k, dtype=int).tolist()


@torch.inference_mode()
def release_video_features(model, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(emb (B, D) L2-normalised, tokens (B, K*(1+N), W))`` of uint8 frames (B, K, 3, H, W):
    the mean of the per-frame projected [CLS], and every frame's tokens concatenated."""
    frames = model.vision.frame_tokens(video)  # (B, K, 1+N, W)
    emb = F.normalize(model.vision_proj(frames[:, :, 0]).mean(dim=1), dim=-1)
    return emb, frames.flatten(1, 2)


@torch.inference_mode()
def release_t2v(
    model,
    video_batches: Iterable[torch.Tensor],
    tokens: dict[str, torch.Tensor],
    k: int,
    device: torch.device | str,
    batch_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(itc (T, V), t2v (T, V))`` the release's way (module docstring, points 1-2).

    ``video_batches``: uint8 frames (B, K, 3, H, W) of every video in order; ``tokens``: the
    queries' ``input_ids`` / ``attention_mask`` (T, L) starting with [CLS]. Under torchrun
    every rank encodes every video (the ITM needs all of them) and re-ranks its share of
    the texts; the rows are gathered, so every rank returns the same matrices. The
    concatenated frame tokens of all videos stay on ``device`` (the ITM of every text reads
    k of them): V x K x (1+N) x W floats, 6.3 GB for 1,000 videos at paper scale.
    """
    device = torch.device(device)
    embs, concatenated = [], []
    with torch.autocast(device.type, enabled=False):
        for video in video_batches:
            emb, cat = release_video_features(model, video.to(device))
            embs.append(emb.float().cpu())
            concatenated.append(cat.float())
        video_emb, video_tokens = torch.cat(embs), torch.cat(concatenated)
        ids, mask = tokens["input_ids"], tokens["attention_mask"]
        text_emb = torch.cat(
            [
                model.encode_text(ids[s : s + batch_size].to(device), mask[s : s + batch_size].to(device)).emb.cpu()
                for s in range(0, len(ids), batch_size)
            ]
        )
        itc = F.normalize(text_emb.float(), dim=-1) @ video_emb.t()
        mine = rdist.shard_range(len(ids))
        rows = _rerank_rows(model, itc, video_tokens, ids, mask, mine, min(k, len(video_emb)), device)
    counts = [len(rdist.shard_range(len(ids), r)) for r in range(rdist.get_world_size())]
    return itc, rdist.gather_shards(rows, counts)


def _rerank_rows(model, itc, video_tokens, ids, mask, texts: range, k: int, device) -> torch.Tensor:
    """Rows ``texts`` of the release's t2v matrix: -100 but on each text's top k videos, where
    it is the ITM match logit (on the concatenated frame tokens) + the cosine."""
    out = torch.full((len(texts), itc.shape[1]), OUTSIDE_TOP_K)
    n_tokens = video_tokens.shape[1]
    for row, t in enumerate(texts):
        top_sim, top_idx = itc[t].topk(k)
        feats = types.SimpleNamespace(
            hidden=video_tokens[top_idx.to(video_tokens.device)],
            hidden_mask=torch.ones(k, n_tokens, dtype=torch.bool, device=device),
        )
        logits = model.itm_logits(feats, ids[t].expand(k, -1).to(device), mask[t].expand(k, -1).to(device))
        out[row, top_idx] = logits[:, 1].float().cpu() + top_sim
    return out
