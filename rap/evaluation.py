"""Text-video retrieval evaluation (paper section 5; ``rap evaluate``).

1. Embeddings once: every test video (``data.frames_eval`` = 8 frames sampled uniformly,
   unmasked) and every text query are encoded in batches under ``torch.inference_mode`` with
   the model in eval mode.
2. ITC ranking: cosine similarity of the L2-normalised global embeddings P_cls, T_cls
   (paper 3.2), ``itc[t, v]`` for text t and video v. Text-to-video ranks the videos of each
   text, video-to-text the texts of each video.
3. Optional ITM re-ranking (``evaluate.itm_rerank_k`` = k; 0 = off), BLIP/ALPRO style: each
   query's k best candidates under ITC are re-scored with ``ITM + ITC`` by the video-grounded
   text encoder, where ITM is the match log-odds ``logit1 - logit0`` computed on the
   frame-averaged video tokens the ITM head was trained on. This is NOT the release's
   evaluation (``evaluate.recipe: release``, :mod:`rap.release.recipe`, runs that one): the
   release scores ``logit1 + ITC`` on the 8 frames' tokens concatenated, text-to-video only,
   and fills every score outside the top k with a constant -100 (ties everywhere beyond rank
   k, so MdR/MnR there depend on tie handling). Here the final score is

       final = ITC                                   outside the top k
       final = C + ITM + ITC                         inside the top k

   with one constant C = max(ITC) - min(ITM + ITC over the top k) + 1 per direction, so that
   every re-ranked candidate stays above every other one and the rest keeps its ITC order:
   ranks beyond k are the ITC ranks, never an artefact of a fill value. Both directions are
   re-ranked (video-to-text: the k best texts of each video); a (text, video) pair in both
   top-k sets is scored once.

Metrics come from :mod:`rap.metrics` (pessimistic ties; video-to-text finds a video at the
best rank of any of its captions, which matters for MSVD's many captions per video).

Under torchrun every rank takes a contiguous share (:func:`rap.distributed.shard_range`) of
the videos, of the texts and of the re-ranked pairs (those whose video is in its share, so
video features never cross ranks); embeddings and ITM scores are gathered, and every rank ends
with the same score matrices and metrics as one process would compute. No rank waits idle,
and no rank waits long enough to hit the process group's timeout.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rap import cpu_kernels, run_lock, tracking
from rap import distributed as rdist
from rap.atomic import write_json_atomic
from rap.checkpoint_io import file_digest, load_model_weights
from rap.config import KNOBS, EvalConfig
from rap.localisation import redundancy_probe
from rap.metrics import t2v_v2t_metrics
from rap.precision import apply_tf32, evaluation_dtype
from rap.tracking_spool import SPOOL_FILE

if TYPE_CHECKING:
    from rap.config import Params
    from rap.data.datasets import EvalSet

__all__ = [
    "EvalScores",
    "encode_eval_set",
    "rerank_scores",
    "itm_pair_scores",
    "score_matrices",
    "evaluate",
    "run_evaluation",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_LEN = 64  # the release's text length at evaluation (model.text.max_len_eval)
# Checkpoint entries evaluation cannot do without (the rest, e.g. the LM decoder or the
# momentum copies, may legitimately be absent from a fine-tuned checkpoint).
_REQUIRED_PREFIXES = ("vision.", "vision_proj.", "text_proj.", "text.bert.")


@dataclass
class EvalScores:
    """Score matrices of one evaluation split (all on the CPU).

    ``itc`` (T, V) cosine similarities; ``t2v`` (T, V) and ``v2t`` (V, T) the final scores
    of each direction (equal to ``itc`` / ``itc.T`` without re-ranking); ``text_to_video``
    (T,) the ground truth.
    """

    itc: torch.Tensor
    t2v: torch.Tensor
    v2t: torch.Tensor
    text_to_video: torch.Tensor
    rerank_k: int
    failed_videos: int = 0
    recipe: str = "rap"  # evaluate.recipe; "release" scores text-to-video only

    def metrics(self, *, with_intervals: bool = False) -> dict[str, dict[str, Any]]:
        result = t2v_v2t_metrics(self.t2v, self.text_to_video, self.v2t, with_intervals=with_intervals)
        if self.recipe == "release":
            del result["v2t"]  # the release leaves video-to-text unscored
            result.get("ci95", {}).pop("v2t", None)
        return result

    def itc_metrics(self) -> dict[str, dict[str, float]]:
        return t2v_v2t_metrics(self.itc, self.text_to_video)


# --------------------------------------------------------------------------------------
# Feature helpers: work for any dataclass of tensors (rap.model.features.VideoFeatures)
# --------------------------------------------------------------------------------------


def _map_fields(feats: Any, fn) -> Any:
    if not dataclasses.is_dataclass(feats):
        raise TypeError(f"model.encode_video must return a dataclass of tensors, got {type(feats).__name__}")
    return type(feats)(**{f.name: fn(getattr(feats, f.name)) for f in dataclasses.fields(feats)})


def _cat_fields(chunks: list[Any]) -> Any:
    first = chunks[0]
    return type(first)(**{f.name: torch.cat([getattr(c, f.name) for c in chunks]) for f in dataclasses.fields(first)})


def _autocast(device: torch.device, dtype: torch.dtype = torch.float32):
    """The encoders' autocast: ``dtype`` from ``evaluate.precision`` (rap.precision); fp32
    switches autocast off, so the embedded scale's evaluation uses no mixed-precision kernel."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


# --------------------------------------------------------------------------------------
# 1. Embeddings
# --------------------------------------------------------------------------------------


@torch.inference_mode()
def encode_eval_set(
    model,
    eval_set: EvalSet,
    tokens: dict[str, torch.Tensor],
    batch_size: int,
    device: torch.device,
    *,
    keep_video_features: bool,
    num_workers: int = 0,
    amp_dtype: torch.dtype = torch.float32,
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Encode every video and text once (this rank: its share of each).

    Returns ``(video_feats, video_emb (V, D), text_emb (T, D))`` on the CPU, the embeddings of
    ALL videos and texts (gathered over ranks); ``video_feats`` holds every field of the
    model's video features for THIS RANK's videos (:func:`rap.distributed.shard_range`), needed
    by ITM re-ranking, when ``keep_video_features``, else None (they are large).
    """
    n_videos = len(eval_set.videos)
    mine = rdist.shard_range(n_videos)
    video_chunks, emb_chunks = [], []
    bar = tqdm(
        total=len(mine), desc=f"{eval_set.dataset} videos", unit="video", leave=False, disable=rdist.get_rank() != 0
    )
    expected = mine.start
    for batch in eval_set.iter_videos(batch_size, num_workers, indices=mine):
        index = batch["video_index"]
        if not torch.equal(index, torch.arange(expected, expected + len(index))):
            raise RuntimeError(
                f"{eval_set.dataset}: video loader returned indices {index.tolist()[:5]}..., "
                f"expected {expected}...: the evaluation loader must not shuffle"
            )
        expected += len(index)
        with _autocast(device, amp_dtype):  # uint8 pixels: the model normalises them on the device
            feats = model.encode_video(batch["video"].to(device, non_blocking=True))
        emb_chunks.append(F.normalize(feats.emb.float(), dim=-1).cpu())
        if keep_video_features:
            video_chunks.append(_map_fields(feats, lambda t: t.cpu()))
        bar.update(len(index))
    bar.close()
    if expected != mine.stop:
        raise RuntimeError(f"{eval_set.dataset}: encoded videos {mine.start}..{expected} of {mine.start}..{mine.stop}")
    eval_set.check_failures(rdist.gather_objects(eval_set.failed))
    video_counts = [len(rdist.shard_range(n_videos, r)) for r in range(rdist.get_world_size())]
    video_emb = rdist.gather_shards(_cat_rows(emb_chunks), video_counts)
    video_feats = _cat_fields(video_chunks) if keep_video_features and video_chunks else None

    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    texts = rdist.shard_range(len(ids))
    text_chunks = []
    for start in tqdm(
        range(texts.start, texts.stop, batch_size),
        desc=f"{eval_set.dataset} texts",
        unit="batch",
        leave=False,
        disable=rdist.get_rank() != 0,
    ):
        sl = slice(start, min(start + batch_size, texts.stop))
        with _autocast(device, amp_dtype):
            feats = model.encode_text(ids[sl].to(device), mask[sl].to(device))
        text_chunks.append(F.normalize(feats.emb.float(), dim=-1).cpu())
    text_counts = [len(rdist.shard_range(len(ids), r)) for r in range(rdist.get_world_size())]
    return video_feats, video_emb, rdist.gather_shards(_cat_rows(text_chunks), text_counts)


def _cat_rows(chunks: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate embedding chunks; an empty share (more ranks than items) has 0 rows."""
    return torch.cat(chunks) if chunks else torch.zeros(0, 0)


# --------------------------------------------------------------------------------------
# 3. ITM re-ranking
# --------------------------------------------------------------------------------------


def rerank_scores(itc: torch.Tensor, topk_index: torch.Tensor, itm: torch.Tensor) -> torch.Tensor:
    """Combine ITC and ITM for one direction (rows = queries, columns = candidates).

    ``itc`` (Q, C); ``topk_index`` (Q, k) the candidates re-scored for each query; ``itm``
    (Q, k) their ITM match logits. Returns float64 (Q, C): ``itc`` everywhere, and
    ``C + itm + itc`` on the top k, with the constant ``C`` lifting the smallest re-ranked
    score one unit above the largest ITC score (see the module docstring). float64 keeps
    the ITC differences exact next to the offset.
    """
    if itc.ndim != 2 or topk_index.shape != itm.shape or topk_index.shape[0] != itc.shape[0]:
        raise ValueError(
            f"rerank_scores: itc {tuple(itc.shape)}, topk_index {tuple(topk_index.shape)} and "
            f"itm {tuple(itm.shape)} do not fit (need (Q, C), (Q, k), (Q, k))"
        )
    if not torch.isfinite(itm).all():
        raise ValueError(f"ITM scores hold {int((~torch.isfinite(itm)).sum())} non-finite value(s)")
    final = itc.double().clone()
    if topk_index.numel() == 0:
        return final
    reranked = itm.double() + final.gather(1, topk_index)
    offset = final.max() - reranked.min() + 1.0
    final.scatter_(1, topk_index, reranked + offset)
    return final


def _itm_autocast(device: torch.device):
    """ITM re-ranking in half precision on a GPU (bf16 where it is native, else fp16: an
    emulated bf16, e.g. on a V100, is several times slower): the cross-encoder pass over k
    pairs per query dominates evaluation time. Elsewhere fp32."""
    if device.type != "cuda":
        return _autocast(device)
    half = torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return torch.autocast("cuda", dtype=half)


@torch.inference_mode()
def itm_pair_scores(
    model,
    video_feats: Any,
    tokens: dict[str, torch.Tensor],
    video_idx: torch.Tensor,
    text_idx: torch.Tensor,
    batch_size: int,
    device: torch.device,
    desc: str = "ITM",
) -> torch.Tensor:
    """``model.itm_scores`` of the pairs (video_idx[p], text_idx[p]), in batches; (P,) float CPU.

    Pairs are taken in video order, so a batch holds few videos with many texts each: each
    batch's videos are sent once and ``video_rows`` lets the model compute their
    cross-attention keys/values once per video rather than once per pair."""
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    order = torch.argsort(video_idx, stable=True)
    out = torch.zeros(len(video_idx))
    for start in tqdm(range(0, len(video_idx), batch_size), desc=desc, unit="batch", leave=False):
        sel = order[start : start + batch_size]
        videos, rows = torch.unique(video_idx[sel], return_inverse=True)
        t = text_idx[sel]
        m = mask[t]
        length = max(int(m.sum(1).max()), 1)  # drop the padding columns no pair of this batch uses
        vf = _map_fields(video_feats, lambda x: x[videos].to(device, non_blocking=True))
        with _itm_autocast(device):
            scores = model.itm_scores(
                vf, ids[t, :length].to(device), m[:, :length].to(device), video_rows=rows.to(device)
            )
        if scores.shape != (len(sel),):
            raise RuntimeError(
                f"model.itm_scores returned shape {tuple(scores.shape)} for {len(sel)} pairs, expected ({len(sel)},)"
            )
        out[sel] = scores.float().cpu()
    return out


def _rerank_both(
    model,
    video_feats: Any,
    tokens: dict[str, torch.Tensor],
    itc: torch.Tensor,
    k: int,
    batch_size: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-ranked (t2v (T, V), v2t (V, T)) score matrices. Each rank scores the pairs whose
    video is in its share (its ``video_feats``); the scores are gathered in rank order."""
    num_texts, num_videos = itc.shape
    k_t2v, k_v2t = min(k, num_videos), min(k, num_texts)
    top_t2v = itc.topk(k_t2v, dim=1).indices  # (T, k): videos of each text
    top_v2t = itc.t().topk(k_v2t, dim=1).indices  # (V, k): texts of each video
    # Pairs as video * T + text, sorted, so that each rank's pairs (its videos) are one block;
    # a pair in both directions' top k is scored once.
    pairs_t2v = top_t2v.flatten() * num_texts + torch.arange(num_texts).repeat_interleave(k_t2v)
    pairs_v2t = torch.arange(num_videos).repeat_interleave(k_v2t) * num_texts + top_v2t.flatten()
    unique, inverse = torch.unique(torch.cat([pairs_t2v, pairs_v2t]), return_inverse=True)
    pair_video, pair_text = unique // num_texts, unique % num_texts
    shares = [rdist.shard_range(num_videos, r) for r in range(rdist.get_world_size())]
    counts = [int(((pair_video >= sh.start) & (pair_video < sh.stop)).sum()) for sh in shares]
    mine = shares[rdist.get_rank()]
    start = sum(counts[: rdist.get_rank()])
    sl = slice(start, start + counts[rdist.get_rank()])
    local = (
        itm_pair_scores(
            model,
            video_feats,
            tokens,
            pair_video[sl] - mine.start,
            pair_text[sl],
            batch_size,
            device,
            desc=f"ITM re-rank top {k}",
        )
        if counts[rdist.get_rank()]
        else torch.zeros(0)
    )
    itm_all = rdist.gather_shards(local, counts)[inverse]
    itm_t2v = itm_all[: len(pairs_t2v)].view(num_texts, k_t2v)
    itm_v2t = itm_all[len(pairs_t2v) :].view(num_videos, k_v2t)
    return rerank_scores(itc, top_t2v, itm_t2v), rerank_scores(itc.t(), top_v2t, itm_v2t)


# --------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------


def score_matrices(
    model,
    tokenizer,
    eval_set: EvalSet,
    eval_cfg: EvalConfig,
    device: torch.device | str,
    *,
    max_len: int | None = None,
    num_workers: int = 0,
) -> EvalScores:
    """ITC (and, with ``eval_cfg.itm_rerank_k > 0``, ITM re-ranked) scores of an eval set.

    ``max_len`` defaults to the model's ``cfg.text.max_len_eval`` (64). The model is moved
    to ``device`` and put in eval mode for the duration; its training flag is restored.
    """
    device = torch.device(device)
    k = int(eval_cfg.itm_rerank_k)
    if k < 0:
        raise ValueError(f"evaluate.itm_rerank_k must be >= 0, got {k}")
    if eval_cfg.batch_size < 1:
        raise ValueError(f"evaluate.batch_size must be >= 1, got {eval_cfg.batch_size}")
    if max_len is None:
        text_cfg = getattr(getattr(model, "cfg", None), "text", None)
        max_len = getattr(text_cfg, "max_len_eval", DEFAULT_MAX_LEN)
    if not eval_set.texts or len(eval_set.videos) == 0:
        raise ValueError(
            f"{eval_set.dataset} {eval_set.split}: empty evaluation set "
            f"({len(eval_set.texts)} texts, {len(eval_set.videos)} videos)"
        )
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.to(device).eval()
    if getattr(eval_cfg, "recipe", "rap") == "release":
        try:
            return _release_scores(model, tokenizer, eval_set, eval_cfg, device, max_len, num_workers)
        finally:
            model.train(was_training)
    try:
        tokens = eval_set.tokenize(tokenizer, max_len)
        apply_tf32(eval_cfg.tf32, device)
        video_feats, video_emb, text_emb = encode_eval_set(
            model,
            eval_set,
            tokens,
            eval_cfg.batch_size,
            device,
            keep_video_features=k > 0,
            num_workers=num_workers,
            amp_dtype=evaluation_dtype(eval_cfg.precision, device),
        )
        itc = text_emb @ video_emb.t()  # (T, V) cosine similarities
        if k > 0:
            t2v, v2t = _rerank_both(model, video_feats, tokens, itc, k, eval_cfg.batch_size, device)
        else:
            t2v, v2t = itc, itc.t()
    finally:
        if isinstance(model, torch.nn.Module):
            model.train(was_training)
    return EvalScores(
        itc=itc,
        t2v=t2v,
        v2t=v2t,
        text_to_video=eval_set.gt,
        rerank_k=k,
        failed_videos=len(getattr(eval_set, "failed", [])),
    )


def _release_scores(model, tokenizer, eval_set, eval_cfg, device, max_len, num_workers) -> EvalScores:
    """``evaluate.recipe: release`` (rap.release.recipe): every rank encodes every video and
    re-ranks its share of the texts; t2v only (``v2t`` is its transpose, not reported)."""
    from rap.release.recipe import release_t2v

    tokens = eval_set.tokenize(tokenizer, max_len)
    batches = (b["video"] for b in eval_set.iter_videos(eval_cfg.batch_size, num_workers))
    itc, t2v = release_t2v(model, batches, tokens, int(eval_cfg.itm_rerank_k), device, eval_cfg.batch_size)
    return EvalScores(
        itc=itc,
        t2v=t2v,
        v2t=t2v.t(),
        text_to_video=eval_set.gt,
        rerank_k=int(eval_cfg.itm_rerank_k),
        failed_videos=len(getattr(eval_set, "failed", [])),
        recipe="release",
    )


def evaluate(
    model,
    tokenizer,
    eval_set: EvalSet,
    eval_cfg: EvalConfig,
    device: torch.device | str,
    *,
    max_len: int | None = None,
    num_workers: int = 0,
) -> dict[str, dict[str, float]]:
    """``{"t2v": {"R@1", "R@5", "R@10", "MdR", "MnR"}, "v2t": {...}}`` of a (zero-shot or
    fine-tuned) model on an evaluation set (see the module docstring for the procedure)."""
    return score_matrices(
        model, tokenizer, eval_set, eval_cfg, device, max_len=max_len, num_workers=num_workers
    ).metrics()


def _check_loaded(result: dict[str, list[str]], checkpoint: Path, rerank: bool) -> None:
    required = _REQUIRED_PREFIXES + (("itm_head.",) if rerank else ())
    missing = [k for k in result.get("missing", []) if k.startswith(required)]
    if missing:
        raise RuntimeError(
            f"{checkpoint}: {len(missing)} weight(s) evaluation needs are missing from the "
            f"checkpoint (was it trained with another model config?): {missing[:5]}"
        )


# The knobs MLflow must show on an evaluation run to plot R@1 against each ablated setting:
# the scored checkpoint's, not the evaluate command's (whose top-level knobs are the main run's).
CHECKPOINT_KNOBS = (*(k.name for k in KNOBS), "seed", "scale")


def evaluation_params(params: Params, checkpoint_params: dict[str, Any] | None) -> dict[str, Any]:
    """What an evaluation run logs as MLflow params: the configuration the checkpoint was
    trained with (every key, so the knobs come along), then this command's evaluation settings
    on top (``evaluate.*``, the test-time frames and text length), which are what it ran."""
    current = params.to_flat_dict()
    evaluation = {
        k: v
        for k, v in current.items()
        if k.startswith("evaluate.") or k in ("data.frames_eval", "data.sampling_eval", "model.text.max_len_eval")
    }
    trained = dict(checkpoint_params or {})
    missing = [k for k in CHECKPOINT_KNOBS if k not in trained]
    if missing:
        log.warning("the checkpoint records no %s: logged from this command's params instead", missing)
        trained.update({k: current[k] for k in missing if k in current})
    return {**trained, **evaluation}


# how a user takes an evaluation's output over from a holder rap cannot check
TAKE_OVER = "pass --take-over-lock"


def run_evaluation(
    params: Params, dataset: str, split: str, checkpoint: Path, out_json: Path, *, take_over_lock: bool = False
) -> dict[str, Any]:
    """``rap evaluate``: load ``checkpoint``, evaluate it on ``dataset``/``split``, write
    ``out_json`` (metrics only: DVC tracks it) and its provenance beside it
    (``<name>.run.json``), and log both to MLflow. Under torchrun every rank takes its share
    (see the module docstring); rank 0 writes, holding ``<out_json>.lock`` before any work to
    the end (:mod:`rap.run_lock`; ``take_over_lock``: take over a holder on another host that
    rap cannot check). Returns the metrics dict.
    """
    from rap.checkpoint_io import load_checkpoint
    from rap.data.datasets import build_eval_set
    from rap.model.rap import RaPModel
    from rap.model.tokenizer import build_tokenizer
    from rap.release.importer import adopt_checkpoint_pixels

    cfg = params.cfg
    cpu_kernels.check_pinned()
    checkpoint, out_json = Path(checkpoint), Path(out_json)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    created_group = not rdist.is_distributed()
    _, _, _, device = rdist.init_distributed()
    lock = None
    try:
        lock = rdist.on_main(
            lambda: run_lock.acquire(
                run_lock.lock_path(out_json, is_file=True), "evaluate", force=take_over_lock, how_to_force=TAKE_OVER
            ),
            share=False,
        )
        digest = file_digest(checkpoint)
        trained_params = load_checkpoint(checkpoint).get("params")
        tags = {
            "rap.dataset": dataset,
            "rap.split": split,
            "rap.checkpoint": str(checkpoint),
            tracking.CHECKPOINT_DIGEST_TAG: digest,
        }
        trained_by = tracking.find_run_by_tag(tracking.CHECKPOINT_DIGEST_TAG, digest)
        if trained_by is not None:
            tags[tracking.TRAINED_BY_TAG] = trained_by
        with tracking.stage_run(
            "evaluate",
            params,
            tags=tags,
            param_values=evaluation_params(params, trained_params),
            spool=out_json.with_name(f"{out_json.stem}.{SPOOL_FILE}"),
        ):
            torch.manual_seed(params.seed)
            # the pixel statistics the checkpoint's weights expect (CLIP's for an imported release file)
            model = RaPModel(adopt_checkpoint_pixels(cfg.model, trained_params), cfg.pretrain.loss)
            tokenizer = getattr(model, "tokenizer", None) or build_tokenizer(cfg.model.text)
            _check_loaded(load_model_weights(model, checkpoint), checkpoint, cfg.evaluate.itm_rerank_k > 0)
            if cfg.evaluate.recipe == "release":
                from rap.release.data import build_release_eval_set

                eval_set = build_release_eval_set(dataset, split, cfg)
            else:
                eval_set = build_eval_set(dataset, split, cfg)
            log.info(
                "evaluating %s on %s/%s: %d queries, %d videos, ITM re-rank k=%d on %s (%d rank(s))",
                checkpoint,
                dataset,
                split,
                len(eval_set.texts),
                len(eval_set.videos),
                cfg.evaluate.itm_rerank_k,
                device,
                rdist.get_world_size(),
            )
            scores = score_matrices(
                model,
                tokenizer,
                eval_set,
                cfg.evaluate,
                device,
                max_len=cfg.model.text.max_len_eval,
                num_workers=cfg.data.num_workers,
            )
            result: dict[str, Any] = dict(scores.metrics(with_intervals=True))
            if scores.rerank_k > 0:
                result["itc_only"] = scores.itc_metrics()  # what the re-ranking adds, for the record
            if rdist.get_rank() == 0 and cfg.evaluate.recipe == "rap":
                # the features' diagnostics, and where the redundancy weights point (embedded
                # corpus only: it has a ground truth); rap.localisation, rap.feature_diagnostics
                result.update(redundancy_probe(model, tokenizer, eval_set, cfg, device))
            info = {
                "dataset": dataset,
                "split": split,
                "checkpoint": str(checkpoint),
                "checkpoint_sha256": digest,
                "num_queries": len(eval_set.texts),
                "num_videos": len(eval_set.videos),
                "itm_rerank_k": scores.rerank_k,
                "recipe": scores.recipe,
                "failed_videos": scores.failed_videos,
                "world_size": rdist.get_world_size(),
            }
            if rdist.get_rank() == 0:
                write_json_atomic(result, out_json)
                write_json_atomic(info, run_info_path(out_json))
                tracking.log_metrics(result)
                tracking.log_metrics({k: info[k] for k in ("num_queries", "num_videos", "failed_videos")})
                tracking.log_artifact(out_json)
                tracking.log_artifact(run_info_path(out_json))
    finally:
        if lock is not None:
            lock.release()
        if created_group:
            rdist.cleanup()
    return result


def run_info_path(metrics_json: Path) -> Path:
    """``runs/eval/zeroshot/msrvtt.json`` -> ``runs/eval/zeroshot/msrvtt.run.json``: the
    provenance of a metrics file (counts, checkpoint, its digest), kept out of DVC's metrics."""
    metrics_json = Path(metrics_json)
    return metrics_json.with_name(f"{metrics_json.stem}.run.json")
