"""Momentum encoders, feature queues and momentum distillation for the global ITC.

Not in the paper; an option of the released code (BLIP/ALBEF), ``loss.momentum: true``.
EMA copies (m = ``loss.momentum_m``) of the video/text encoders and projections produce
(i) extra negatives kept in FIFO queues and (ii) soft targets: the ITC target becomes
``alpha * softmax(momentum similarities) + (1 - alpha) * ground truth`` (ALBEF eq. 6), with
``alpha`` ramped by the trainer (``distill_alpha`` over ``distill_ramp_epochs``).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from rap.distributed import GatherCache, all_gather_no_grad
from rap.model.features import TextFeatures, VideoFeatures, project_text, project_video
from rap.model.text import TextEncoder
from rap.model.video import VideoEncoder


class MomentumEncoders(nn.Module):
    """EMA copies + queues. Attribute names mirror :class:`rap.model.rap.RaPModel` so that
    :meth:`update` can pair parameters by name."""

    def __init__(
        self,
        vision: VideoEncoder,
        text: TextEncoder | None,
        vision_proj: nn.Linear,
        text_proj: nn.Linear | None,
        *,
        queue_size: int,
        m: float,
        queue_init: str = "empty",
    ) -> None:
        """``text=None``: a video-only copy (the intra-video second view), no text tower.
        ``queue_init``: "empty", or "random" unit vectors counted as negatives from the start."""
        super().__init__()
        self.vision = copy.deepcopy(vision)
        self.vision_proj = copy.deepcopy(vision_proj)
        if text is not None and text_proj is not None:
            self.text = copy.deepcopy(text)
            # The momentum text tower only runs the unimodal pass: drop the ITM/LM parts.
            del self.text.cross_attn, self.text.dec_self_attn, self.text.lm_transform, self.text.lm_bias
            self.text_proj = copy.deepcopy(text_proj)
        for p in self.parameters():
            p.requires_grad_(False)
        self.m = m
        dim = vision_proj.out_features
        self.register_buffer("video_queue", torch.zeros(queue_size, dim))
        self.register_buffer("text_queue", torch.zeros(queue_size, dim))
        self.register_buffer("id_queue", torch.full((queue_size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self.queue_init = queue_init
        self._init_queues()

    @torch.no_grad()
    def _init_queues(self) -> None:
        self.ptr.zero_()
        self.id_queue.fill_(-1)
        if self.queue_init == "random":  # the release: F.normalize(torch.randn(dim, size), dim=0)
            for q in (self.video_queue, self.text_queue):
                q.copy_(F.normalize(torch.randn_like(q), dim=1))
            self.filled.fill_(self.video_queue.shape[0])
        else:
            self.filled.zero_()

    @torch.no_grad()
    def reset_from(self, online: nn.Module) -> None:
        """Copy the online weights (BLIP's copy_params) and start the queues afresh: momentum encoders
        for a model whose checkpoint has none (fine-tuning from a pre-training without them)."""
        params = dict(online.named_parameters())
        for name, p_m in self.named_parameters():
            p_m.copy_(params[name].detach())
        self._init_queues()

    @torch.no_grad()
    def update(self, online: nn.Module) -> None:
        """theta_m <- m * theta_m + (1 - m) * theta (names resolved against ``online``)."""
        params = dict(online.named_parameters())
        for name, p_m in self.named_parameters():
            p_m.mul_(self.m).add_(params[name].detach(), alpha=1.0 - self.m)

    @torch.no_grad()
    def embed_video(self, video: torch.Tensor, mask_ratio: float) -> torch.Tensor:
        """Momentum global video embeddings (B, D): forward only, no activations kept."""
        return project_video(self.vision, self.vision_proj, video, mask_ratio).emb

    @torch.no_grad()
    def embed(
        self, video: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, mask_ratio: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Momentum global embeddings (B, D) of the same inputs (same MAC ratio, own mask)."""
        v, t = self.features(video, input_ids, attention_mask, mask_ratio)
        return v.emb, t.emb

    @torch.no_grad()
    def features(
        self, video: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, mask_ratio: float
    ) -> tuple[VideoFeatures, TextFeatures]:
        """Momentum features, global and local (the release's local terms read these)."""
        v = project_video(self.vision, self.vision_proj, video, mask_ratio)
        t = project_text(self.text, self.text_proj, input_ids, attention_mask)
        return v, t

    def queue_nce(
        self,
        anchor: torch.Tensor,
        partner_m: torch.Tensor,
        modality: str,
        temperature: torch.Tensor,
        video_ids: torch.Tensor | None,
    ) -> torch.Tensor:
        """The release's intra-modal i2i / t2t (rap_pretrain.py:172-176): online ``anchor``
        (B, D) against [momentum embeddings of the batch ``partner_m``; the ``modality``
        ("video" | "text") queue], hard targets (one-hot, or uniform over the samples of the
        anchor's video with ``video_ids``), one direction, mean over the batch."""
        queue = {"video": self.video_queue, "text": self.text_queue}[modality]
        candidates = torch.cat([partner_m, queue])
        b, q = anchor.shape[0], queue.shape[0]
        slot = torch.arange(q, device=self.filled.device)
        valid = torch.cat(
            [torch.ones(b, dtype=torch.bool, device=anchor.device), (slot < self.filled).to(anchor.device)]
        )
        with torch.no_grad():
            targets = _hard_targets(b, q, video_ids, self.id_queue, valid)
        log_p = F.log_softmax(_mask_empty(anchor @ candidates.T / temperature, valid), dim=1)
        return -(log_p * targets).sum(1).mean()

    def distilled_itc(
        self,
        video_emb: torch.Tensor,
        text_emb: torch.Tensor,
        video_m: torch.Tensor,
        text_m: torch.Tensor,
        temperature: torch.Tensor,
        alpha: float,
        video_ids: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ITC (eqs. 2-3) against [momentum batch; queue] with distilled soft targets.

        The whole queue takes part, its empty slots masked out (their logits at the lowest
        finite value, exp = 0): the same loss as slicing the filled part, without reading the
        fill level on the host (a GPU sync per step)."""
        video_all = torch.cat([video_m, self.video_queue])
        text_all = torch.cat([text_m, self.text_queue])
        b, q = video_emb.shape[0], self.video_queue.shape[0]
        slot = torch.arange(q, device=self.filled.device)
        valid = torch.cat(
            [torch.ones(b, dtype=torch.bool, device=video_emb.device), (slot < self.filled).to(video_emb.device)]
        )
        with torch.no_grad():
            targets = _hard_targets(b, q, video_ids, self.id_queue, valid)
            tau = temperature.detach()
            soft_v2t = F.softmax(_mask_empty(video_m @ text_all.T / tau, valid), dim=1)
            soft_t2v = F.softmax(_mask_empty(text_m @ video_all.T / tau, valid), dim=1)
            target_v2t = alpha * soft_v2t + (1 - alpha) * targets
            target_t2v = alpha * soft_t2v + (1 - alpha) * targets
        log_p_v2t = F.log_softmax(_mask_empty(video_emb @ text_all.T / temperature, valid), dim=1)
        log_p_t2v = F.log_softmax(_mask_empty(text_emb @ video_all.T / temperature, valid), dim=1)
        loss_v2t = -(log_p_v2t * target_v2t).sum(1).mean()
        loss_t2v = -(log_p_t2v * target_t2v).sum(1).mean()
        return loss_v2t, loss_t2v

    @torch.no_grad()
    def enqueue(
        self, video_m: torch.Tensor, text_m: torch.Tensor, video_ids: torch.Tensor | None, gather: bool | GatherCache
    ) -> None:
        """FIFO ring buffer; with ``gather`` every rank enqueues the global batch (BLIP). A
        :class:`GatherCache` reuses the ids the losses gathered already."""
        if video_ids is None:
            video_ids = torch.full((video_m.shape[0],), -1, dtype=torch.long, device=video_m.device)
        if isinstance(gather, GatherCache):
            video_m, text_m, video_ids = (gather.no_grad(x) for x in (video_m, text_m, video_ids))
        elif gather:
            video_m, text_m, video_ids = (all_gather_no_grad(x) for x in (video_m, text_m, video_ids))
        q = self.video_queue.shape[0]
        k = min(video_m.shape[0], q)
        slots = (self.ptr + torch.arange(k, device=self.ptr.device)) % q
        self.video_queue[slots] = video_m[-k:].to(self.video_queue.dtype)
        self.text_queue[slots] = text_m[-k:].to(self.text_queue.dtype)
        self.id_queue[slots] = video_ids[-k:]
        self.ptr.copy_((self.ptr + k) % q)
        self.filled.copy_(torch.clamp(self.filled + k, max=q))


def _hard_targets(
    b: int, q: int, video_ids: torch.Tensor | None, id_queue: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """(B, B + Q) ground-truth targets over [batch; queue]: one-hot on the own sample, or
    uniform over every valid entry of the anchor's video with ``video_ids``."""
    if video_ids is None:
        positives = torch.zeros(b, b + q, device=valid.device)
        positives[:, :b] = torch.eye(b, device=valid.device)
    else:
        ids_all = torch.cat([video_ids, id_queue.to(video_ids.device)])
        positives = ((video_ids[:, None] == ids_all[None, :]) & valid[None, :]).float()
    return positives / positives.sum(dim=1, keepdim=True)


def _mask_empty(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Empty queue slots get the lowest finite logit: exp() = 0 and 0 * log p stays 0 (with
    -inf it would be 0 * -inf = NaN in the target-weighted sum)."""
    return logits.masked_fill(~valid[None, :], torch.finfo(logits.dtype).min)
