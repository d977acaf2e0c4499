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
* ``auc_lo`` / ``auc_hi``: beside each pooled AUC, its 95 % bootstrap interval over queries (pairs
  resampled, :func:`rap.redundancy_metrics.pair_bootstrap_auc`);
* ``pair_auc``: the mean over pairs of the AUC within each pair (pairs with both classes); it
  is the same for both weightings, since softmax keeps the order within a pair;
* ``cls_query``: what the paper's Figure 3 actually draws (its caption and section 5.6): the
  [CLS]-query maps, the similarity s(T_cls, P_n) of the caption's [CLS] feature with every patch
  and s(P_cls, T_l) of the video's [CLS] feature with every token, scored the same way.

The model is scored in eval mode whatever mode it was handed in (dropout off; its mode is
restored afterwards): ``torch.inference_mode`` alone leaves dropout on. The same pass measures
the features (:mod:`rap.feature_diagnostics`), for every evaluation: with or without a ground
truth (:func:`redundancy_probe`).

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
from rap.feature_diagnostics import FeatureDiagnostics
from rap.losses import racl_weights, redundancy
from rap.redundancy_metrics import OBJECT_MIN, pair_bootstrap_auc, roc_auc, separation

if TYPE_CHECKING:
    from rap.config import ScaleConfig
    from rap.data.datasets import EvalSet

__all__ = [
    "CLS_QUERY",
    "DIAGNOSTIC_VIDEOS",
    "SCORES",
    "WEIGHTINGS",
    "caption_truth",
    "has_ground_truth",
    "localisation_metrics",
    "redundancy_probe",
    "video_key",
]

log = logging.getLogger(__name__)

WEIGHTINGS = ("paper", "official")
CLS_QUERY = "cls_query"  # the paper's Figure 3: s(T_cls, P_n) over patches, s(P_cls, T_l) over tokens
SCORES = (*WEIGHTINGS, CLS_QUERY)
# Without a ground truth (the public datasets) the diagnostics read the first this many videos
# of the split and their queries: enough for stable means, a small cost beside the retrieval.
DIAGNOSTIC_VIDEOS = 256


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
    """Scores and labels of every pair, pooled, and the weights' AUC within each pair."""

    def __init__(self) -> None:
        self.scores: dict[str, list[np.ndarray]] = {w: [] for w in SCORES}
        self.labels: list[np.ndarray] = []
        self.pair_aucs: list[float] = []

    def add(self, scores: dict[str, np.ndarray], positive: np.ndarray, negative: np.ndarray) -> None:
        keep = positive | negative
        for name in scores:
            self.scores[name].append(scores[name][keep])
        self.labels.append(positive[keep])
        if positive.any() and negative.any():
            self.pair_aucs.append(roc_auc(scores["paper"][keep], positive[keep]))

    def summary(self) -> dict[str, Any]:
        labels = np.concatenate(self.labels) if self.labels else np.zeros(0, bool)
        out: dict[str, Any] = {}
        if labels.any() and not labels.all():  # else no AUC is defined: the keys are left out
            for name, parts in self.scores.items():
                if len(parts) == len(self.labels):
                    out[name] = separation(np.concatenate(parts), labels, ~labels)
                    out[name]["auc_lo"], out[name]["auc_hi"] = pair_bootstrap_auc(parts, self.labels)
        if self.pair_aucs:
            out["pair_auc"] = float(np.mean(self.pair_aucs))
        out["pairs"] = len(self.pair_aucs)
        return out


class _eval_mode:
    """The model in eval mode (dropout off) inside, its own mode restored after (issue 20: the
    localisation was scored with dropout on when ``rap evaluate`` left the model training)."""

    def __init__(self, model) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.was_training = bool(getattr(self.model, "training", False))
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()


@torch.inference_mode()
def redundancy_probe(
    model, tokenizer, eval_set: EvalSet, cfg: ScaleConfig, device: torch.device
) -> dict[str, dict[str, Any]]:
    """``{"diagnostics": {...}}`` (:mod:`rap.feature_diagnostics`) for any split, plus
    ``"localisation"`` (:func:`localisation_metrics`) where the split has a ground truth. One
    pass: each video is encoded once, each of its queries once. Without a ground truth only the
    first :data:`DIAGNOSTIC_VIDEOS` videos are read."""
    truth = None
    if has_ground_truth(cfg, eval_set.dataset):
        truth = gt.load_ground_truth(gt.truth_index_path(cfg.data.root, eval_set.dataset))
    patches, tokens, diagnostics = _Pooled(), _Pooled(), FeatureDiagnostics()
    tau = model.temperature.detach().float()
    skipped = seen = 0
    limit = len(eval_set.videos) if truth is not None else min(len(eval_set.videos), DIAGNOSTIC_VIDEOS)
    bar = tqdm(total=limit, desc=f"{eval_set.dataset} localisation", unit="video", leave=False)
    with _eval_mode(model):
        for batch in eval_set.iter_videos(cfg.evaluate.batch_size):
            if seen >= limit:
                break
            v_feats = model.encode_video(batch["video"].to(device))
            for row, v in enumerate(batch["video_index"].tolist()):
                if seen >= limit:
                    break
                seen += 1
                bar.update(1)
                if batch["failed"][row]:
                    skipped += 1
                    continue
                valid = _np(v_feats.patch_mask[row]).astype(bool)
                diagnostics.add_video(_np(v_feats.patches[row]), valid)
                entry = coverage = None
                if truth is not None:
                    entry = truth[video_key(cfg, eval_set.dataset, eval_set.videos.clips[v].record.path)]
                    coverage = evaluated_coverage(cfg, entry)["averaged"].ravel()
                for t in eval_set.video_to_texts[v]:
                    _score_pair(
                        model, tokenizer, cfg, device, tau, v_feats, row, eval_set, t, entry, coverage,
                        patches, tokens, diagnostics,
                    )  # fmt: skip
    bar.close()
    if skipped:
        log.warning("localisation: %d video(s) failed to decode and were left out", skipped)
    out: dict[str, dict[str, Any]] = {"diagnostics": {**diagnostics.summary(), "skipped_videos": skipped}}
    if truth is not None:
        out["localisation"] = {
            "patch": patches.summary(),
            "token": tokens.summary(),
            "object_min": OBJECT_MIN,
            "skipped_videos": skipped,
        }
    return out


def _score_pair(
    model, tokenizer, cfg, device, tau, v_feats, row, eval_set, t, entry, coverage, patches, tokens, diagnostics
) -> None:
    """Encode query ``t``, weigh its pair with video row ``row`` (eqs. 4-8 and the [CLS]-query
    maps), add the pair to the pooled scores (with a ground truth) and to the diagnostics."""
    text = eval_set.texts[t]
    caption = None
    if entry is not None:
        caption = caption_truth(entry, text)
        if caption is None:
            raise ValueError(f"{eval_set.dataset}: query {text!r} has no ground-truth caption")
        text = caption["text"]
    enc = tokenizer(
        text,
        truncation=True,
        max_length=cfg.model.text.max_len_eval,
        return_offsets_mapping=caption is not None,
        return_tensors="pt",
    )
    t_feats = model.encode_text(enc["input_ids"].to(device), enc["attention_mask"].to(device))
    p_feats = v_feats.patches[row : row + 1].float()
    p_mask = v_feats.patch_mask[row : row + 1]
    valid, keep = _np(p_mask[0]).astype(bool), _np(t_feats.token_mask[0]).astype(bool)
    diagnostics.add_pair(_np(p_feats[0]), valid, _np(t_feats.tokens[0]), keep, coverage)
    if caption is None:
        return
    vr, tr = redundancy(p_feats, t_feats.tokens.float(), t_feats.token_mask, patch_mask=p_mask)
    w = {name: racl_weights(vr, tr, p_mask, t_feats.token_mask, variant=name, tau=tau) for name in WEIGHTINGS}
    patch_scores = {name: _np(w[name][0][0]) for name in WEIGHTINGS}
    patch_scores[CLS_QUERY] = _np(p_feats[0] @ t_feats.emb[0].float())  # s(T_cls, P_n)
    patches.add(patch_scores, (coverage >= OBJECT_MIN) & valid, (coverage == 0) & valid)
    labels = gt.token_labels(caption, enc["offset_mapping"][0].tolist())[1:]  # tokens after [CLS]
    lab = np.asarray([str(x) for x in labels])
    token_scores = {name: _np(w[name][1][0]) for name in WEIGHTINGS}
    token_scores[CLS_QUERY] = _np(t_feats.tokens[0].float() @ v_feats.emb[row].float())  # s(P_cls, T_l)
    tokens.add(token_scores, (lab == gt.SHOWN) & keep, (lab == gt.REDUNDANT_PHRASE) & keep)


def localisation_metrics(model, tokenizer, eval_set: EvalSet, cfg: ScaleConfig, device: torch.device) -> dict[str, Any]:
    """``{"patch": {...}, "token": {...}, "object_min": 0.5, "skipped_videos": n}`` for
    ``eval_set`` (module docstring); each of patch/token holds ``paper``, ``official`` and
    ``cls_query`` ({auc, ap, positives, negatives}; left out when the split lacks one class),
    ``pair_auc`` (the paper weights'; left out when no pair has both) and ``pairs``."""
    if not has_ground_truth(cfg, eval_set.dataset):
        raise FileNotFoundError(
            f"{eval_set.dataset}: no ground truth ({gt.truth_index_path(cfg.data.root, eval_set.dataset)})"
        )
    return redundancy_probe(model, tokenizer, eval_set, cfg, device)["localisation"]
