"""Does RaCL find the redundancy? The redundancy-localisation metric of a checkpoint on an
embedded test split (issue 11; the paper's claim is its qualitative Figure 3).

For every query of the split and its own video, the model encodes both as evaluation does
(``data.frames_eval`` uniform frames, unmasked) and measures the redundancy of the pair,
eqs. (4)-(6). RaCL's weights (:func:`rap.losses.racl_weights`) should be high on what the other
modality names and low on the rest:

* patches: the weight of each position of the frame-averaged grid (paper 3.2) against the
  ground truth's captioned-object coverage of that position averaged over the same frames
  (:func:`rap.data.ground_truth.patch_coverage`): positives cover >= 0.5, negatives 0;
* tokens: the weight of each token against the caption's spans: shown words vs redundant
  phrases (:func:`rap.data.ground_truth.token_labels`).

Scored by ROC-AUC and average precision (:mod:`rap.redundancy_metrics`):

* ``paper`` / ``official``: pooled over all pairs, with the paper's ``w = 1 - r`` and with the
  release's ``softmax((1 - r) / tau)`` per pair;
* ``pair_auc``: the mean over pairs of the AUC within each pair (pairs with both classes); it
  is the same for both weightings, since softmax keeps the order within a pair.

Only the embedded corpus has a ground truth (``raw/<dataset>/ground_truth.jsonl``, copied for
the indexed clips to ``index/<dataset>.truth.jsonl`` by ``rap extract``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from rap.data import ground_truth as gt
from rap.losses import racl_weights, redundancy
from rap.redundancy_metrics import OBJECT_MIN, roc_auc, separation

if TYPE_CHECKING:
    from rap.config import ScaleConfig
    from rap.data.datasets import EvalSet

__all__ = ["WEIGHTINGS", "caption_truth", "has_ground_truth", "localisation_metrics", "video_key"]

log = logging.getLogger(__name__)

WEIGHTINGS = ("paper", "official")


def has_ground_truth(cfg: ScaleConfig, dataset: str) -> bool:
    """Whether ``rap extract`` found a ground truth for ``dataset`` (embedded corpus only)."""
    path = gt.truth_index_path(cfg.data.root, dataset)
    return path.is_file() and path.stat().st_size > 0


def caption_truth(entry: dict, text: str) -> dict | None:
    """The ground-truth caption (text + spans) of query ``text`` of this clip: the caption with
    that exact text, or, for a paragraph query (DiDeMo: the sentences joined by single spaces,
    :mod:`rap.data.adapters`), the sentences joined the same way with their spans shifted."""
    for caption in entry["captions"]:
        if caption["text"] == text:
            return caption
    parts, spans, at = [], [], 0
    for caption in entry["captions"]:
        stripped = caption["text"].strip()
        lead = len(caption["text"]) - len(caption["text"].lstrip())
        if parts:
            at += 1  # the joining space
        spans += [[a - lead + at, b - lead + at, kind] for a, b, kind in caption["spans"]]
        parts.append(stripped)
        at += len(stripped)
    return {"text": " ".join(parts), "spans": spans} if " ".join(parts) == text else None


def video_key(cfg: ScaleConfig, dataset: str, path: Path) -> str:
    """A clip's key in the ground truth: its path relative to ``raw/<dataset>``."""
    return Path(path).resolve().relative_to((Path(cfg.data.root) / "raw" / dataset).resolve()).as_posix()


def evaluated_coverage(cfg: ScaleConfig, entry: dict) -> dict[str, np.ndarray]:
    """The captioned-object coverage of the patches evaluation shows for this clip
    (:func:`rap.data.ground_truth.patch_coverage` at ``data.frames_eval`` frames)."""
    return gt.patch_coverage(
        entry,
        image_size=cfg.data.image_size,
        patch_size=cfg.model.vision.patch_size,
        frames=cfg.data.frames_eval,
        store_fps=cfg.data.store_fps,
    )


class _Pooled:
    """Weights and labels of every pair, pooled, and the AUC within each pair."""

    def __init__(self) -> None:
        self.weights: dict[str, list[np.ndarray]] = {w: [] for w in WEIGHTINGS}
        self.labels: list[np.ndarray] = []
        self.pair_aucs: list[float] = []

    def add(self, weights: dict[str, np.ndarray], positive: np.ndarray, negative: np.ndarray) -> None:
        keep = positive | negative
        for name in WEIGHTINGS:
            self.weights[name].append(weights[name][keep])
        self.labels.append(positive[keep])
        if positive.any() and negative.any():
            self.pair_aucs.append(roc_auc(weights["paper"][keep], positive[keep]))

    def summary(self) -> dict[str, Any]:
        labels = np.concatenate(self.labels) if self.labels else np.zeros(0, bool)
        out: dict[str, Any] = {}
        if labels.any() and not labels.all():  # else no AUC is defined: the keys are left out
            for name in WEIGHTINGS:
                out[name] = separation(np.concatenate(self.weights[name]), labels, ~labels)
        if self.pair_aucs:
            out["pair_auc"] = float(np.mean(self.pair_aucs))
        out["pairs"] = len(self.pair_aucs)
        return out


@torch.inference_mode()
def localisation_metrics(model, tokenizer, eval_set: EvalSet, cfg: ScaleConfig, device: torch.device) -> dict[str, Any]:
    """``{"patch": {...}, "token": {...}, "object_min": 0.5}`` for ``eval_set`` (module
    docstring); each of patch/token holds ``paper`` and ``official`` ({auc, ap, positives,
    negatives}; left out when the split lacks one class), ``pair_auc`` (left out when no pair
    has both) and ``pairs``."""
    truth = gt.load_ground_truth(gt.truth_index_path(cfg.data.root, eval_set.dataset))
    patches, tokens = _Pooled(), _Pooled()
    tau = model.temperature.detach().float()
    skipped = 0
    bar = tqdm(total=len(eval_set.videos), desc=f"{eval_set.dataset} localisation", unit="video", leave=False)
    for batch in eval_set.iter_videos(cfg.evaluate.batch_size):
        v_feats = model.encode_video(batch["video"].to(device))
        for row, v in enumerate(batch["video_index"].tolist()):
            bar.update(1)
            if batch["failed"][row]:
                skipped += 1
                continue
            entry = truth[video_key(cfg, eval_set.dataset, eval_set.videos.clips[v].record.path)]
            coverage = evaluated_coverage(cfg, entry)["averaged"].ravel()
            for t in eval_set.video_to_texts[v]:
                caption = caption_truth(entry, eval_set.texts[t])
                if caption is None:
                    raise ValueError(f"{eval_set.dataset}: query {eval_set.texts[t]!r} has no ground-truth caption")
                enc = tokenizer(
                    caption["text"],
                    truncation=True,
                    max_length=cfg.model.text.max_len_eval,
                    return_offsets_mapping=True,
                    return_tensors="pt",
                )
                t_feats = model.encode_text(enc["input_ids"].to(device), enc["attention_mask"].to(device))
                p_feats = v_feats.patches[row : row + 1].float()
                p_mask = v_feats.patch_mask[row : row + 1]
                vr, tr = redundancy(p_feats, t_feats.tokens.float(), t_feats.token_mask, patch_mask=p_mask)
                w = {
                    name: racl_weights(vr, tr, p_mask, t_feats.token_mask, variant=name, tau=tau) for name in WEIGHTINGS
                }
                valid = p_mask[0].cpu().numpy()
                patches.add(
                    {name: w[name][0][0].cpu().numpy() for name in WEIGHTINGS},
                    (coverage >= OBJECT_MIN) & valid,
                    (coverage == 0) & valid,
                )
                labels = gt.token_labels(caption, enc["offset_mapping"][0].tolist())[1:]  # tokens after [CLS]
                keep = t_feats.token_mask[0].cpu().numpy()
                lab = np.asarray([str(x) for x in labels])
                tokens.add(
                    {name: w[name][1][0].cpu().numpy() for name in WEIGHTINGS},
                    (lab == gt.SHOWN) & keep,
                    (lab == gt.REDUNDANT_PHRASE) & keep,
                )
    bar.close()
    if skipped:
        log.warning("localisation: %d video(s) failed to decode and were left out", skipped)
    return {
        "patch": patches.summary(),
        "token": tokens.summary(),
        "object_min": OBJECT_MIN,
        "skipped_videos": skipped,
    }
