"""RaPModel: encoders, projections, temperature, auxiliary heads and the loss of eq. (10).

    L = L_others + lambda * L_RaCL,   L_RaCL = L^R_v2t + L^R_t2v          (eqs. 9-10)
    L_others = w_itc * ITC + w_itm * ITM + w_lm * LM + w_iv * intra_video + w_it * intra_text

ITC is eqs. (2)-(3) (mean of the two directions), RaCL eqs. (7)-(8) from :mod:`rap.losses`,
the auxiliary tasks are those of appendix A.1 (BLIP's ITM and LM, TCL/SimCSE intra-modal
InfoNCE). A term whose weight is 0 is neither computed nor reported.

MAC masking (``model.mask_video`` / ``model.mask_text``) applies only to pre-training in
training mode; evaluation and fine-tuning always see the whole input.
"""

from __future__ import annotations

from typing import Literal, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from rap.config import LossConfig, ModelConfig
from rap.distributed import GatherCache
from rap.losses import itc_loss, racl_function, racl_terms
from rap.model.features import TextFeatures, VideoFeatures, project_text, project_video
from rap.model.masking import mask_text
from rap.model.momentum import MomentumEncoders
from rap.model.text import TextEncoder, VideoKV, with_prompt
from rap.model.tokenizer import SpecialIds, build_tokenizer
from rap.model.video import VideoEncoder

Phase = Literal["pretrain", "finetune"]  # the objective being trained (DESIGN.md "Vocabulary")
# Parameters exempt from weight decay besides every 1-D tensor (norms, biases).
_NO_DECAY_SUFFIXES = ("temp", "pos_embed", "cls_token", "position_embeddings.weight", "token_type_embeddings.weight")


class RaPModel(nn.Module):
    def __init__(self, model_cfg: ModelConfig, loss_cfg: LossConfig) -> None:
        super().__init__()
        self.cfg = model_cfg
        self.loss_cfg = loss_cfg
        self.tokenizer = build_tokenizer(model_cfg.text)
        self.special = SpecialIds.of(self.tokenizer)
        self.vision = VideoEncoder(model_cfg.vision)
        self.text = TextEncoder(model_cfg.text, len(self.tokenizer), self.special.pad, self.vision.width)
        # One projection per modality, shared by global and local features (paper 3.2).
        self.vision_proj = nn.Linear(self.vision.width, model_cfg.embed_dim)
        self.text_proj = nn.Linear(self.text.width, model_cfg.embed_dim)
        self.temp = nn.Parameter(torch.tensor(float(model_cfg.temp_init)))
        self.itm_head = nn.Linear(self.text.width, 2)
        self.momentum: MomentumEncoders | None = None
        if loss_cfg.momentum:
            self.momentum = MomentumEncoders(
                self.vision,
                self.text,
                self.vision_proj,
                self.text_proj,
                queue_size=loss_cfg.queue_size,
                m=loss_cfg.momentum_m,
                queue_init=loss_cfg.queue_init,
            )
        elif loss_cfg.intra_video_view == "momentum" and loss_cfg.intra_video_weight > 0:
            # Only the video tower is needed for the second view; no queues.
            self.momentum = MomentumEncoders(
                self.vision, None, self.vision_proj, None, queue_size=1, m=loss_cfg.momentum_m
            )

    # ------------------------------------------------------------------ parameters
    @property
    def temperature(self) -> torch.Tensor:
        """tau, clamped to [temp_min, temp_max] (gradient passes inside the range)."""
        return self.temp.clamp(self.cfg.temp_min, self.cfg.temp_max)

    @torch.no_grad()
    def clamp_temperature(self) -> None:
        """Clamp the stored tau in place; the trainer calls this after every optimiser step."""
        self.temp.clamp_(self.cfg.temp_min, self.cfg.temp_max)

    def no_weight_decay_names(self) -> set[str]:
        """Trainable parameters AdamW should not decay: norms, biases, tau, position/[CLS] embeddings."""
        return {
            name
            for name, p in self.named_parameters()
            if p.requires_grad and (p.ndim <= 1 or name.endswith(_NO_DECAY_SUFFIXES))
        }

    def unused_parameter_names(self) -> set[str]:
        """Trainable parameters no switched-on loss term reaches (so they never get a gradient).

        DDP needs ``find_unused_parameters=True`` (an extra graph traversal every step) only
        when this is non-empty; with every term of eq. (10) on, it is empty."""
        lc = self.loss_cfg
        uses_lm, uses_itm = lc.lm_weight > 0, lc.itm_weight > 0
        uses_embeddings = (
            lc.itc_weight > 0
            or (lc.racl != "none" and lc.racl_lambda > 0)
            or lc.intra_video_weight > 0
            or lc.intra_text_weight > 0
        )
        prefixes = []
        if not uses_lm:
            prefixes += ["text.dec_self_attn.", "text.lm_transform.", "text.lm_bias"]
        if not uses_itm:
            prefixes += ["itm_head."]
        if not uses_lm and not uses_itm:
            prefixes += ["text.cross_attn."]
        if not uses_embeddings:
            prefixes += ["vision_proj.", "text_proj.", "temp"]
        return (
            {name for name, p in self.named_parameters() if p.requires_grad and name.startswith(tuple(prefixes))}
            if prefixes
            else set()
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.vision.set_grad_checkpointing(enable)
        self.text.grad_checkpointing = enable

    # ------------------------------------------------------------------ encoders
    def encode_video(
        self, video: torch.Tensor, mask_ratio: float = 0.0, generator: torch.Generator | None = None
    ) -> VideoFeatures:
        """(B, K, 3, H, W) -> :class:`VideoFeatures`; ``mask_ratio`` is ignored in eval mode."""
        return project_video(self.vision, self.vision_proj, video, mask_ratio, generator)

    def mask_text_input(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mask_ratio: float,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MAC text masking (training mode only), see :func:`rap.model.masking.mask_text`."""
        if not self.training or mask_ratio == 0.0:
            return input_ids, attention_mask
        return mask_text(
            input_ids, attention_mask, mask_ratio, sep_id=self.special.sep, pad_id=self.special.pad, generator=generator
        )

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, mask_ratio: float = 0.0
    ) -> TextFeatures:
        """(B, L) ids -> :class:`TextFeatures`; ``mask_ratio`` is ignored in eval mode."""
        input_ids, attention_mask = self.mask_text_input(input_ids, attention_mask, mask_ratio)
        return project_text(self.text, self.text_proj, input_ids, attention_mask)

    def _itm_logits(
        self,
        video_hidden: torch.Tensor | None,
        video_mask: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        video_kv: VideoKV | None = None,
    ) -> torch.Tensor:
        """(B, 2) no-match / match logits from the [ENC] output of the video-grounded encoder."""
        h = self.text(
            with_prompt(input_ids, self.special.enc),
            attention_mask,
            video_hidden=video_hidden,
            video_mask=video_mask,
            video_kv=video_kv,
        )
        return self.itm_head(h[:, 0])

    def itm_scores(
        self,
        video_feats: VideoFeatures,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        video_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Match logit log(p_match / p_no_match), (P,), for pair p = (video p, text p), or with
        ``video_rows`` (P,) for pair p = (video ``video_rows[p]`` of ``video_feats``, text p):
        each video's cross-attention keys and values are then computed once, however many of
        the P texts it is paired with (ITM re-ranking), and gathered per pair.

        Uses the frame-averaged video tokens exactly as in training (the release trains on
        averaged tokens but evaluates on concatenated frames; we do not: its recipe is
        rap.release.recipe).
        """
        logits = self.itm_logits(video_feats, input_ids, attention_mask, video_rows)
        return logits[:, 1] - logits[:, 0]

    def itm_logits(
        self,
        video_feats: VideoFeatures,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        video_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(P, 2) no-match / match logits of the pairs :meth:`itm_scores` describes; the
        cross-attention reads ``video_feats.hidden`` / ``hidden_mask``, whatever their length."""
        if video_rows is None:
            return self._itm_logits(video_feats.hidden, video_feats.hidden_mask, input_ids, attention_mask)
        kv = [(k[video_rows], v[video_rows]) for k, v in self.text.video_kv(video_feats.hidden)]
        return self._itm_logits(None, video_feats.hidden_mask[video_rows], input_ids, attention_mask, kv)

    # ------------------------------------------------------------------ losses
    def forward(
        self,
        batch: Mapping[str, torch.Tensor],
        *,
        alpha: float = 0.0,
        phase: Phase = "pretrain",
        gather: bool = False,
        check_gather_shapes: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Loss terms of eq. (10) for one batch (keys: see module docstring and DESIGN.md).

        ``batch``: video (B,K,3,H,W), input_ids/attention_mask (B,L), optional video_index (B,)
        (same-video samples are never negatives), video_aug (needed for intra_video).
        ``alpha``: momentum-distillation weight (only with ``loss.momentum``).
        ``phase``: pre-training or fine-tuning; MAC masking only in "pretrain" (and training mode).
        ``gather``: contrastive candidates all-gathered across ranks (see rap.losses); each
        tensor travels once per call (one :class:`GatherCache` per forward: the ids and the
        global embeddings serve every term). ``check_gather_shapes=False`` skips the shape
        all-gather before each gather (and its host sync): only for callers that guarantee
        equal shapes on every rank (equal local batch, text padded to one length).
        """
        if phase not in ("pretrain", "finetune"):
            raise ValueError(f"phase must be 'pretrain' or 'finetune', got {phase!r}")
        for key in ("video", "input_ids", "attention_mask"):
            if key not in batch:
                raise KeyError(f"batch has no {key!r} (keys: {sorted(batch)})")
        lc = self.loss_cfg
        masked = phase == "pretrain" and self.training
        r_v = self.cfg.mask_video if masked else 0.0
        r_t = self.cfg.mask_text if masked else 0.0
        video_ids = batch.get("video_index")
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]

        v = self.encode_video(batch["video"], r_v)
        t_ids, t_mask = self.mask_text_input(input_ids, attention_mask, r_t)
        t = project_text(self.text, self.text_proj, t_ids, t_mask)
        tau = self.temperature
        shared: GatherCache | bool = GatherCache(check_shapes=check_gather_shapes) if gather else False

        out: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=v.emb.device)
        if self.momentum is not None and self.training:
            self.momentum.update(self)
        mom = None  # momentum features (video, text): ITC targets, queue, release-style terms
        if lc.momentum and self.momentum is not None:
            mom = self.momentum.features(self._momentum_video(batch, phase), t_ids, t_mask, r_v)
        if lc.itc_weight > 0:
            if mom is not None:
                l_v2t, l_t2v = self.momentum.distilled_itc(v.emb, t.emb, mom[0].emb, mom[1].emb, tau, alpha, video_ids)
            else:
                l_v2t, l_t2v = itc_loss(v.emb, t.emb, tau, video_ids=video_ids, gather=shared)
            out["itc"] = (l_v2t + l_t2v) / 2
            total = total + lc.itc_weight * out["itc"]
        if lc.racl != "none" and lc.racl_lambda > 0:
            # The release's local terms read the momentum encoders' patches and tokens.
            vl, tl = (mom[0], mom[1]) if lc.racl_locals == "momentum" else (v, t)
            extra = {"double_normalise": lc.racl_double_normalise} if lc.racl_variant == "official" else {}
            r_v2t, r_t2v = racl_function(lc.racl_variant)(
                v.emb,
                vl.patches,
                t.emb,
                tl.tokens,
                tl.token_mask,
                tau,
                patch_mask=vl.patch_mask,
                weight_grad=lc.racl_weight_grad,
                weight_floor=lc.racl_weight_floor,
                video_ids=video_ids,
                # the released code's local loss sees the per-GPU batch only
                gather=shared if lc.racl_variant == "paper" else False,
                **extra,
            )
            terms = racl_terms(lc.racl, r_v2t, r_t2v)
            out.update(terms)
            total = total + lc.racl_lambda * sum(terms.values())
        if lc.itm_weight > 0:
            out["itm"] = self._itm_loss(v, t, input_ids, attention_mask, video_ids)
            total = total + lc.itm_weight * out["itm"]
        if lc.lm_weight > 0:
            out["lm"] = self._lm_loss(v, input_ids, attention_mask)
            total = total + lc.lm_weight * out["lm"]
        if lc.intra_video_weight > 0 and lc.intra_queue:
            out["intra_video"] = self.momentum.queue_nce(v.emb, mom[0].emb, "video", tau, video_ids)  # i2i
            total = total + lc.intra_video_weight * out["intra_video"]
        elif lc.intra_video_weight > 0:
            if "video_aug" not in batch:
                raise KeyError("loss.intra_video_weight > 0 needs batch['video_aug'] (a second augmented view)")
            v_aug = self._second_view(batch["video_aug"], r_v)
            a, b = itc_loss(v.emb, v_aug, tau, video_ids=video_ids, gather=shared)
            out["intra_video"] = (a + b) / 2
            total = total + lc.intra_video_weight * out["intra_video"]
        if lc.intra_text_weight > 0 and lc.intra_queue:
            out["intra_text"] = self.momentum.queue_nce(t.emb, mom[1].emb, "text", tau, video_ids)  # t2t
            total = total + lc.intra_text_weight * out["intra_text"]
        elif lc.intra_text_weight > 0:
            # SimCSE: a second pass over the same (masked) ids; only dropout differs.
            t_aug = project_text(self.text, self.text_proj, t_ids, t_mask)
            a, b = itc_loss(t.emb, t_aug.emb, tau, video_ids=video_ids, gather=shared)
            out["intra_text"] = (a + b) / 2
            total = total + lc.intra_text_weight * out["intra_text"]
        if not out:
            raise ValueError("no loss term is switched on: every loss weight is 0 and racl is 'none' or lambda 0")
        if mom is not None and self.training:  # after every term read the queue (the release's order)
            self.momentum.enqueue(mom[0].emb, mom[1].emb, video_ids, shared)
        out["loss"] = total
        return out

    def _momentum_video(self, batch: Mapping[str, torch.Tensor], phase: Phase) -> torch.Tensor:
        """The clip the momentum encoders see: the training view, or in pre-training with
        ``loss.momentum_video_view: second`` the augmented one (rap_pretrain.py:127)."""
        if self.loss_cfg.momentum_video_view == "second" and phase == "pretrain":
            if "video_aug" not in batch:
                raise KeyError("loss.momentum_video_view 'second' needs batch['video_aug'] (a second augmented view)")
            return batch["video_aug"]
        return batch["video"]

    def _second_view(self, video_aug: torch.Tensor, mask_ratio: float) -> torch.Tensor:
        """Global embeddings (B, D) of the augmented view for intra-video (A.1), by the encoder
        ``loss.intra_video_view`` names: the online one (gradient through both views) or its
        momentum copy (forward only; gradient through the first view, as in TCL)."""
        if self.loss_cfg.intra_video_view == "momentum":
            if self.momentum is None:
                raise ValueError("loss.intra_video_view 'momentum' needs the momentum video encoder")
            return self.momentum.embed_video(video_aug, mask_ratio)
        return self.encode_video(video_aug, mask_ratio).emb

    def _itm_loss(
        self,
        v: VideoFeatures,
        t: TextFeatures,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        video_ids: torch.Tensor | None,
    ) -> torch.Tensor:
        """Video-text matching (A.1): positives + one hard negative per video and per text (BLIP).

        Negatives are drawn from softmax of the contrastive similarities with every entry of
        the same video zeroed; a sample without any other video in the batch gets none. The
        negatives come from this rank's batch only (BLIP gathers them across GPUs).
        """
        b = input_ids.shape[0]
        dev = input_ids.device
        with torch.no_grad():
            ids = video_ids if video_ids is not None else torch.arange(b, device=dev)
            same = ids[:, None] == ids[None, :]
            if self.cfg.itm_hard_negatives:
                sim = v.emb.float() @ t.emb.float().T / self.temperature.detach()
                # Softmax over the allowed candidates only: zeroing after the softmax lets every
                # negative underflow to 0 once tau is small and the positive dominates.
                w_v2t = F.softmax(sim.masked_fill(same, float("-inf")), dim=1).nan_to_num(0.0)  # video -> texts
                w_t2v = F.softmax(sim.T.masked_fill(same, float("-inf")), dim=1).nan_to_num(0.0)  # text -> videos
            else:
                w_v2t = w_t2v = (~same).float()
            neg_text, has_neg_text = _sample_rows(w_v2t)
            neg_video, has_neg_video = _sample_rows(w_t2v)
        rows = torch.arange(b, device=dev)
        # Always 3B pairs (positives, a negative text per video, a negative video per text) so
        # that no size depends on the data (boolean indexing would make the GPU wait for the
        # host); a pair without a negative is computed but weighs 0 in the mean.
        vid_idx = torch.cat([rows, neg_video, rows])
        txt_idx = torch.cat([rows, rows, neg_text])
        labels = torch.cat(
            [torch.ones(b, dtype=torch.long, device=dev), torch.zeros(2 * b, dtype=torch.long, device=dev)]
        )
        used = torch.cat([torch.ones(b, dtype=torch.bool, device=dev), has_neg_video, has_neg_text])
        logits = self._itm_logits(
            v.hidden[vid_idx], v.hidden_mask[vid_idx], input_ids[txt_idx], attention_mask[txt_idx]
        )
        per_pair = F.cross_entropy(logits.float(), labels, reduction="none")
        return torch.where(used, per_pair, torch.zeros_like(per_pair)).sum() / used.sum()

    def _lm_loss(self, v: VideoFeatures, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Video-grounded captioning (A.1): [DEC] as BOS, predict every following real token
        ([SEP] acts as end of sequence), label smoothing ``loss.lm_label_smoothing``."""
        h = self.text(
            with_prompt(input_ids, self.special.dec),
            attention_mask,
            video_hidden=v.hidden,
            video_mask=v.hidden_mask,
            causal=True,
        )
        logits = self.text.lm_logits(h[:, :-1])
        labels = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
        return F.cross_entropy(
            logits.flatten(0, 1).float(),
            labels.flatten(),
            ignore_index=-100,
            label_smoothing=self.loss_cfg.lm_label_smoothing,
        )


def _sample_rows(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One column index per row drawn proportionally to ``weights`` (B, B); rows summing to 0
    have no candidate: returns ``(index (B,), has_candidate (B,) bool)``."""
    valid = weights.sum(dim=1) > 0
    safe = torch.where(valid[:, None], weights, torch.ones_like(weights))
    return torch.multinomial(safe, 1).squeeze(1), valid
