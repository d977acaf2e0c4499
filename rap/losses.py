"""Contrastive objectives of RaP (paper sections 3.3 and 4).

* :func:`itc_loss`            global video-text contrastive learning, eqs. (2)-(3)
* :func:`redundancy`          cross-modal minimum dis-similarity, eqs. (4)-(6)
* :func:`racl_loss`           redundancy-aware contrastive learning, eqs. (7)-(8)
* :func:`racl_loss_official`  the released code's patch/token weighting (``racl_variant: official``)
* :func:`racl_terms`          the eq. (9) terms kept by the Table 5 switch (both / v2t / t2v / none)

Conventions shared by every function here:

* Inputs are L2-normalised already, so the similarity of eq. (1) is a dot product.
* Shapes: global embeddings ``(B, D)``; patch features ``(B, N, D)`` with ``patch_mask (B, N)``
  (True = valid; ``None`` = all valid; MAC masking marks unseen positions False); token
  features ``(B, L, D)`` with ``token_mask (B, L)`` (True = real non-[CLS] token, padding False).
* Invalid positions (padding, masked patches) have no influence whatsoever: their features are
  replaced by zeros before any product and every score involving them is masked out, so
  changing their values, or appending more of them, changes neither the loss nor any gradient.
* Precision: all arithmetic runs in float32 (float64 when the inputs are float64, which lets
  ``torch.autograd.gradcheck`` run), with autocast switched off inside; losses are returned as
  float32 (float64) scalars whatever the input dtype (bf16, fp16, fp32).
* ``gather=True`` (or a :class:`rap.distributed.GatherCache`, which makes every tensor of one
  forward pass travel once and can skip the shape checks) inside a multi-rank process group:
  anchors are this rank's B samples, the candidates are those of the global batch, and this
  rank's positives sit at offset ``rank * B``. The per-rank loss is a mean over the local
  anchors, so the mean over ranks equals the one-process loss on the global batch and DDP's
  gradient averaging reproduces the one-process gradient. Ranks need equal B.
* What travels: ITC gathers the global embeddings ``(B, D)``. RaCL (eqs. 7-8) does *not*
  gather the local features (``(B, N, D)`` patches, ``(B, L, D)`` tokens): each rank gathers the
  anchors ``(B', D)`` (the same global embeddings ITC gathers), computes for every anchor of
  the global batch the log-sum-exp over its *own* candidates' local features, and the ranks
  exchange these partial log-sum-exps ``(B',)``; ``logsumexp`` over ranks is the full
  denominator, exactly (about 250x less traffic than the features at the paper's scale, and
  the same FLOPs). ``local_gather="features"`` restores the feature gather (benchmarks).
* ``video_ids (B,)``: which video each sample comes from (fine-tuning sets with several
  captions per video). Samples sharing a video are never treated as negatives of each other.
* Logsumexp everywhere; nothing of size ``(B, L, B*L)`` is ever built: the largest tensors are
  the score matrices ``(B, B', L)`` / ``(B, B', N)`` and the redundancy matrix ``(B, N, L)``.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Literal

import torch
from torch import Tensor

from rap.distributed import GatherCache, all_gather_no_grad, all_gather_with_grad, get_rank, is_distributed

__all__ = [
    "itc_loss",
    "redundancy",
    "racl_loss",
    "racl_loss_official",
    "racl_terms",
    "racl_function",
    "racl_weights",
    "RACL_DIRECTIONS",
]

RACL_DIRECTIONS = ("both", "v2t", "t2v", "none")
# Redundancy reported at invalid positions (padding, masked patches, or a valid position whose
# partner sample has no valid position at all): d = 1 is "orthogonal to everything", so the
# paper weight 1 - r is 0 there. The losses never read these entries; the value only makes a
# consumer that forgets the mask (a visualisation, say) see "irrelevant" rather than "perfect".
INVALID_REDUNDANCY = 1.0

Temperature = float | Tensor
Gather = bool | GatherCache  # False: this rank's batch only; True / a cache: the global batch
LocalGather = Literal["anchors", "features"]
LOCAL_GATHERS = ("anchors", "features")


def _masked_value(dtype: torch.dtype) -> float:
    """Score given to excluded entries before a logsumexp: the lowest finite value, not -inf,
    so that a row with nothing valid stays finite (its logsumexp backward would otherwise be
    0 * NaN); exp(lowest - lse) is exactly 0, so valid rows are unaffected bit for bit."""
    return torch.finfo(dtype).min


# --------------------------------------------------------------------------------------
# Shared plumbing: validation, precision, candidates of the global batch
# --------------------------------------------------------------------------------------


def _acc_dtype(*xs: Tensor) -> torch.dtype:
    return torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32


@contextlib.contextmanager
def _no_autocast(device: torch.device) -> Iterator[None]:
    """Under AMP, einsum/matmul would be cast back to half precision: keep the scores fp32.
    (The meta device, where benchmarks count FLOPs, has no autocast.)"""
    if device.type == "meta":
        yield
        return
    with torch.autocast(device_type=device.type, enabled=False):
        yield


def _check_shape(x: Tensor, name: str, shape: tuple[int | None, ...]) -> None:
    ok = x.dim() == len(shape) and all(want is None or got == want for got, want in zip(x.shape, shape))
    if not ok:
        dims = ", ".join("?" if s is None else str(s) for s in shape)
        raise ValueError(f"{name} must have shape ({dims}), got {tuple(x.shape)}")


def _check_mask(mask: Tensor, name: str, shape: tuple[int, int]) -> Tensor:
    if mask.dtype.is_floating_point or mask.is_complex():
        raise ValueError(f"{name} must be a bool (or integer 0/1) tensor, got dtype {mask.dtype}")
    _check_shape(mask, name, shape)
    return mask.bool()


def _temperature(temperature: Temperature, dtype: torch.dtype, device: torch.device) -> Tensor:
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1:
            raise ValueError(f"temperature must be a scalar, got shape {tuple(temperature.shape)}")
        return temperature.reshape(()).to(device=device, dtype=dtype)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    return torch.tensor(float(temperature), dtype=dtype, device=device)


def _check_video_ids(video_ids: Tensor | None, batch: int) -> None:
    if video_ids is None:
        return
    if video_ids.dtype.is_floating_point or video_ids.dtype == torch.bool:
        raise ValueError(f"video_ids must be an integer tensor, got dtype {video_ids.dtype}")
    _check_shape(video_ids, "video_ids", (batch,))


def _use_gather(gather: Gather) -> bool:
    return bool(gather) and is_distributed()


def _global(x: Tensor, gather: Gather, *, grad: bool = True, dtype: torch.dtype | None = None) -> Tensor:
    """The global batch of ``x`` (cast to ``dtype``; with gradient unless ``grad=False``), or
    ``x`` itself in one process. A :class:`GatherCache` gathers each tensor once per forward."""
    if not _use_gather(gather):
        return x if dtype is None else x.to(dtype)
    if isinstance(gather, GatherCache):
        return gather.with_grad(x, dtype) if grad else gather.no_grad(x)
    send = x if dtype is None else x.to(dtype)
    return all_gather_with_grad(send) if grad else all_gather_no_grad(send)


def _offset(batch: int, gather: Gather) -> int:
    """Index of this rank's first sample in the global batch."""
    return get_rank() * batch if _use_gather(gather) else 0


def _global_ids(video_ids: Tensor | None, device: torch.device, gather: Gather) -> Tensor | None:
    return None if video_ids is None else _global(video_ids.to(device), gather, grad=False)


def _own(n_rows: int, n_cols: int, row_offset: int, col_offset: int, device: torch.device) -> Tensor:
    """(R, C) bool: row sample and column sample are the same sample of the global batch."""
    rows = torch.arange(n_rows, device=device) + row_offset
    cols = torch.arange(n_cols, device=device) + col_offset
    return rows[:, None] == cols[None, :]


def _same_ids(row_ids: Tensor | None, col_ids: Tensor | None, n_cols: int) -> Tensor | None:
    """(R, C) bool: same video (own partner included), or None without ids."""
    if row_ids is None or col_ids is None:
        return None
    if col_ids.shape[0] != n_cols:
        raise ValueError(f"video_ids gathered to {col_ids.shape[0]} entries for {n_cols} candidates")
    return row_ids[:, None] == col_ids[None, :]


def _zero_invalid(feats: Tensor, mask: Tensor) -> Tensor:
    """Replace invalid rows by zeros so that even non-finite padding cannot leak (0 * NaN)."""
    return torch.where(mask[..., None], feats, torch.zeros((), dtype=feats.dtype, device=feats.device))


# --------------------------------------------------------------------------------------
# Eqs. (2)-(3): global ITC
# --------------------------------------------------------------------------------------


def _soft_target_ce(logits: Tensor, positives: Tensor) -> Tensor:
    """Mean over rows of -sum_j q_ij log softmax(logits)_ij with q uniform over the positives."""
    lse = torch.logsumexp(logits, dim=1)
    pos_mean = torch.where(positives, logits, torch.zeros_like(logits)).sum(1) / positives.sum(1)
    return (lse - pos_mean).mean()


def itc_loss(
    video_emb: Tensor,
    text_emb: Tensor,
    temperature: Temperature,
    *,
    video_ids: Tensor | None = None,
    gather: Gather = False,
) -> tuple[Tensor, Tensor]:
    """Video-text contrastive loss, paper eqs. (2) (video-to-text) and (3) (text-to-video).

    ``L_v2t^i = -log exp(s(P_cls^i, T_cls^i)/tau) / sum_j exp(s(P_cls^i, T_cls^j)/tau)`` and
    symmetrically for t2v, each averaged over the (local) batch; s is eq. (1), a dot product.

    With ``video_ids`` every candidate of the same video is a positive and the target mass is
    spread uniformly over them (soft-target cross-entropy), so captions of one video are never
    pushed apart during fine-tuning. Without it the target is one-hot, exactly eqs. (2)-(3).

    Returns ``(loss_v2t, loss_t2v)``, float32 scalars (float64 for float64 inputs).
    """
    _check_shape(video_emb, "video_emb", (None, None))
    batch, dim = video_emb.shape
    _check_shape(text_emb, "text_emb", (batch, dim))
    _check_video_ids(video_ids, batch)
    dtype, device = _acc_dtype(video_emb, text_emb), video_emb.device
    with _no_autocast(device):
        tau = _temperature(temperature, dtype, device)
        v, t = video_emb.to(dtype), text_emb.to(dtype)
        all_v, all_t = _global(video_emb, gather, dtype=dtype), _global(text_emb, gather, dtype=dtype)
        n_cand = all_t.shape[0]
        positives = _own(batch, n_cand, _offset(batch, gather), 0, device)
        ids = None if video_ids is None else video_ids.to(device)
        same = _same_ids(ids, _global_ids(video_ids, device, gather), n_cand)
        if same is not None:
            positives = positives | same
        loss_v2t = _soft_target_ce(v @ all_t.T / tau, positives)  # eq. (2)
        loss_t2v = _soft_target_ce(t @ all_v.T / tau, positives)  # eq. (3)
    return loss_v2t, loss_t2v


# --------------------------------------------------------------------------------------
# Eqs. (4)-(6): redundancy of patches and tokens within each matched pair
# --------------------------------------------------------------------------------------


def redundancy(
    patch_feats: Tensor, token_feats: Tensor, token_mask: Tensor, *, patch_mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Visual and textual redundancy of each matched video-text pair, paper eqs. (4)-(6).

    ``d(P_n, T_l) = 1 - s(P_n, T_l)`` (eq. 4) over the non-[CLS] patches and tokens of the
    *same* pair; ``vr_n = min_l d`` (eq. 5, over valid tokens) and ``tr_l = min_n d`` (eq. 6,
    over valid patches). Padding tokens and ``patch_mask``-False patches are never the argmin.

    Shapes: ``patch_feats (B, N, D)``, ``token_feats (B, L, D)``, ``token_mask (B, L)``,
    ``patch_mask (B, N)`` or None -> ``vr (B, N)``, ``tr (B, L)`` in float32 (float64 for
    float64 inputs). Entries at invalid positions, and at valid positions whose pair has no
    valid partner at all, are set to ``INVALID_REDUNDANCY`` = 1.0 (weight 1 - r = 0); the
    losses exclude them explicitly, downstream users must mask them too. Gradients of the min
    reach the arg-min pair only (split evenly on exact ties).
    """
    _check_shape(patch_feats, "patch_feats", (None, None, None))
    batch, n_patch, dim = patch_feats.shape
    _check_shape(token_feats, "token_feats", (batch, None, dim))
    n_tok = token_feats.shape[1]
    token_mask = _check_mask(token_mask, "token_mask", (batch, n_tok))
    patch_mask = (
        torch.ones(batch, n_patch, dtype=torch.bool, device=patch_feats.device)
        if patch_mask is None
        else _check_mask(patch_mask, "patch_mask", (batch, n_patch))
    )
    dtype, device = _acc_dtype(patch_feats, token_feats), patch_feats.device
    with _no_autocast(device):
        patches = _zero_invalid(patch_feats.to(dtype), patch_mask)
        tokens = _zero_invalid(token_feats.to(dtype), token_mask)
        return _redundancy(patches, tokens, token_mask, patch_mask)


def _redundancy(patches: Tensor, tokens: Tensor, token_mask: Tensor, patch_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Eqs. (4)-(6) on validated, cast, padding-zeroed inputs."""
    # eq. (4), the matrix M, (B, N, L). bmm in this orientation returns the (large) patch
    # gradient contiguous: .grad then takes it over without a layout copy.
    dis = 1.0 - torch.bmm(patches, tokens.transpose(1, 2))
    pair_valid = patch_mask[:, :, None] & token_mask[:, None, :]
    dis = dis.masked_fill(~pair_valid, float("inf"))
    vr = dis.amin(dim=2)  # eq. (5): row minimum
    tr = dis.amin(dim=1)  # eq. (6): column minimum
    fill = torch.full((), INVALID_REDUNDANCY, dtype=dis.dtype, device=dis.device)
    vr = torch.where(patch_mask & token_mask.any(1, keepdim=True), vr, fill)
    tr = torch.where(token_mask & patch_mask.any(1, keepdim=True), tr, fill)
    return vr, tr


# --------------------------------------------------------------------------------------
# Eqs. (7)-(8): redundancy-aware contrastive learning
# --------------------------------------------------------------------------------------


def racl_weights(
    vr: Tensor,
    tr: Tensor,
    patch_mask: Tensor,
    token_mask: Tensor,
    *,
    variant: Literal["paper", "official"] = "paper",
    tau: Tensor | float | None = None,
) -> tuple[Tensor, Tensor]:
    """The weight RaCL gives each patch and token of a matched pair: ``(w_patch (B, N), w_token (B, L))``.

    ``paper``: ``w = 1 - redundancy`` (eqs. 7-8, with vr, tr of eqs. 5-6); ``official``: the
    release's ``softmax((1 - r) / tau)`` over the pair's valid positions (sums to 1 per pair;
    ``tau`` required). Both are zero at invalid positions. Within one pair the two orders the
    positions the same way (softmax is monotone); across pairs they differ."""
    if variant == "paper":
        zero = torch.zeros((), dtype=vr.dtype, device=vr.device)
        return torch.where(patch_mask, 1.0 - vr, zero), torch.where(token_mask, 1.0 - tr, zero)
    if variant != "official":
        raise ValueError(f"unknown RaCL variant {variant!r}; expected 'paper' or 'official'")
    if tau is None:
        raise ValueError("the official variant's weights need the temperature tau")
    tau = torch.as_tensor(tau, dtype=vr.dtype, device=vr.device)
    return _softmax_weights(1.0 - vr, patch_mask, tau), _softmax_weights(1.0 - tr, token_mask, tau)


class _Prepared:
    """Validated, precision-cast, padding-zeroed inputs shared by both RaCL variants."""

    def __init__(
        self,
        video_emb: Tensor,
        patch_feats: Tensor,
        text_emb: Tensor,
        token_feats: Tensor,
        token_mask: Tensor,
        temperature: Temperature,
        patch_mask: Tensor | None,
        video_ids: Tensor | None,
    ) -> None:
        _check_shape(video_emb, "video_emb", (None, None))
        batch, dim = video_emb.shape
        _check_shape(text_emb, "text_emb", (batch, dim))
        _check_shape(patch_feats, "patch_feats", (batch, None, dim))
        _check_shape(token_feats, "token_feats", (batch, None, dim))
        n_patch, n_tok = patch_feats.shape[1], token_feats.shape[1]
        self.token_mask = _check_mask(token_mask, "token_mask", (batch, n_tok))
        self.patch_mask = (
            torch.ones(batch, n_patch, dtype=torch.bool, device=patch_feats.device)
            if patch_mask is None
            else _check_mask(patch_mask, "patch_mask", (batch, n_patch))
        )
        _check_video_ids(video_ids, batch)
        self.batch, self.device = batch, video_emb.device
        self.dtype = _acc_dtype(video_emb, text_emb, patch_feats, token_feats)
        self.tau = _temperature(temperature, self.dtype, self.device)
        self.video = video_emb.to(self.dtype)
        self.text = text_emb.to(self.dtype)
        # Without a patch mask every patch is valid: skip a (B, N, D) copy and its backward.
        self.patches = (
            patch_feats.to(self.dtype)
            if patch_mask is None
            else _zero_invalid(patch_feats.to(self.dtype), self.patch_mask)
        )
        self.tokens = _zero_invalid(token_feats.to(self.dtype), self.token_mask)
        self.video_ids = None if video_ids is None else video_ids.to(self.device)
        # The uncast embeddings: gathers are keyed on them, so RaCL reuses ITC's gathers.
        self.video_src, self.text_src = video_emb, text_emb


def _own_scores(anchor: Tensor, locals_: Tensor, tau: Tensor) -> Tensor:
    """(B, M): ``s(anchor_i, local_m of sample i) / tau``, the matched partner's local features."""
    return torch.bmm(locals_, (anchor / tau)[:, :, None]).squeeze(2)


def _partial_lse(
    anchors: Tensor,
    anchor_ids: Tensor | None,
    anchor_offset: int,
    locals_: Tensor,
    local_mask: Tensor,
    local_ids: Tensor | None,
    local_offset: int,
    tau: Tensor,
    drop_own: bool,
) -> Tensor:
    """(A,): ``logsumexp_{j, m} s(anchor_a, local_m of candidate j) / tau`` over the valid local
    features of the C candidates given, for each of the A anchors given.

    Offsets place anchors and candidates in the global batch. Candidates of the anchor's video
    (``anchor_ids == local_ids``) are left out, the anchor's own partner too with ``drop_own``
    (the official variant's negatives) or kept without (eqs. 7-8's denominators). The (A, C, M)
    score tensor is the largest thing built."""
    n_anchor = anchors.shape[0]
    n_cand, n_local, dim = locals_.shape
    # (C M, D) @ (D, A) rather than an einsum: the gradient w.r.t. the (large) local features
    # comes out contiguous, and 1/tau is applied to the (A, D) anchors, not to (A, C, M).
    scores = (locals_.reshape(n_cand * n_local, dim) @ (anchors / tau).T).T.reshape(n_anchor, n_cand, n_local)
    masked = _masked_value(scores.dtype)
    scores = scores.masked_fill(~local_mask[None, :, :], masked)  # broadcast: no (A, C, M) mask
    own = _own(n_anchor, n_cand, anchor_offset, local_offset, anchors.device)
    same = _same_ids(anchor_ids, local_ids, n_cand)
    drop = (own | same if same is not None else own) if drop_own else (None if same is None else same & ~own)
    if drop is not None:
        scores = scores.masked_fill(drop[:, :, None], masked)
    return torch.logsumexp(scores.reshape(n_anchor, -1), dim=1)


def _global_lse(
    anchor: Tensor,
    anchor_src: Tensor,
    locals_: Tensor,
    local_mask: Tensor,
    tau: Tensor,
    video_ids: Tensor | None,
    gather: Gather,
    drop_own: bool,
    local_gather: LocalGather,
) -> Tensor:
    """(B,): the denominator of eqs. (7)/(8) (or the official negatives) for this rank's anchors,
    over the local features of every candidate of the global batch.

    Across ranks (``local_gather="anchors"``): every rank gathers the anchors of the global
    batch (``anchor_src``, shared with ITC through a cache), computes their log-sum-exps over
    its own candidates, and the ranks gather these partial results: logsumexp over ranks of
    per-rank logsumexps is the logsumexp over the union, exactly, in loss and gradient.
    ``"features"`` gathers the candidates' local features instead (the traffic of the naive way).
    """
    batch = anchor.shape[0]
    if not _use_gather(gather):
        return _partial_lse(anchor, video_ids, 0, locals_, local_mask, video_ids, 0, tau, drop_own)
    offset = _offset(batch, gather)
    all_ids = _global_ids(video_ids, anchor.device, gather)
    if local_gather == "features":
        return _partial_lse(
            anchor,
            video_ids,
            offset,
            _global(locals_, gather),
            _global(local_mask, gather, grad=False),
            all_ids,
            0,
            tau,
            drop_own,
        )
    all_anchors = _global(anchor_src, gather, dtype=anchor.dtype)
    partial = _partial_lse(all_anchors, all_ids, 0, locals_, local_mask, video_ids, offset, tau, drop_own)
    per_rank = _global(partial[None, :], gather)  # (world, B'): every rank's partial sums
    return torch.logsumexp(per_rank[:, offset : offset + batch], dim=0)


def _weighted_local_nce(
    anchor: Tensor,
    anchor_src: Tensor,
    locals_: Tensor,
    local_mask: Tensor,
    log_w: Tensor,
    tau: Tensor,
    video_ids: Tensor | None,
    gather: Gather,
    local_gather: LocalGather,
) -> Tensor:
    """One direction of eqs. (7)/(8), averaged over the anchors:

    ``-log sum_m w_m exp(s(a_i, x_m^i)/tau) / sum_j sum_m exp(s(a_i, x_m^j)/tau)``

    as ``logsumexp_{j,m}(S) - logsumexp_m(log w_m + S_i,i,m)`` over valid m only. Candidates j
    of the anchor's video other than its own partner are dropped from the denominator.
    """
    masked = _masked_value(anchor.dtype)
    numer = (log_w + _own_scores(anchor, locals_, tau)).masked_fill(~local_mask, masked)
    denom = _global_lse(
        anchor, anchor_src, locals_, local_mask, tau, video_ids, gather, drop_own=False, local_gather=local_gather
    )
    per_sample = denom - torch.logsumexp(numer, dim=1)
    # A sample without a single valid local feature has no positive: its term is defined as 0
    # (still counted in the mean so that per-rank means average to the global mean).
    has = local_mask.any(1)
    return torch.where(has, per_sample, torch.zeros_like(per_sample)).mean()


def _check_local_gather(local_gather: str) -> None:
    if local_gather not in LOCAL_GATHERS:
        raise ValueError(f"local_gather must be one of {LOCAL_GATHERS}, got {local_gather!r}")


def _prepare_with_redundancy(
    video_emb, patch_feats, text_emb, token_feats, token_mask, temperature, patch_mask, video_ids, weight_floor: float
):
    """What both RaCL variants start from: validated, masked fp32 inputs and the redundancies
    vr, tr of eqs. (4)-(6). Call inside ``_no_autocast``."""
    if not 0 < weight_floor < 1:
        raise ValueError(f"weight_floor must be in (0, 1), got {weight_floor!r}")
    x = _Prepared(video_emb, patch_feats, text_emb, token_feats, token_mask, temperature, patch_mask, video_ids)
    vr, tr = _redundancy(x.patches, x.tokens, x.token_mask, x.patch_mask)
    return x, vr, tr


def racl_loss(
    video_emb: Tensor,
    patch_feats: Tensor,
    text_emb: Tensor,
    token_feats: Tensor,
    token_mask: Tensor,
    temperature: Temperature,
    *,
    patch_mask: Tensor | None = None,
    weight_grad: bool = True,
    weight_floor: float = 1e-4,
    video_ids: Tensor | None = None,
    gather: Gather = False,
    local_gather: LocalGather = "anchors",
) -> tuple[Tensor, Tensor]:
    """Redundancy-aware contrastive loss, paper eqs. (7) (v2t) and (8) (t2v).

    v2t, anchor ``P_cls^i``: the positives are the matched text's valid tokens ``T_l^i``
    weighted by ``w_l = 1 - tr_l`` (eq. 6); the denominator runs over every valid token of
    every text of the (global) batch::

        L_v2t^R = -log sum_l w_l exp(s(P_cls^i, T_l^i)/tau) / sum_j sum_l exp(s(P_cls^i, T_l^j)/tau)

    t2v, anchor ``T_cls^i``, is symmetric with the patches and ``w_n = 1 - vr_n`` (eq. 5).
    Each returned loss is the mean over the local batch, float32 (float64 for float64 inputs).

    * ``weight_floor``: weights are clamped to ``>= weight_floor`` before the log, so a pair
      whose every local feature is redundant (w ~ 0) keeps a finite loss.
    * ``weight_grad``: True lets the gradient flow through the weights into the local
      features (the paper calls the redundancy measure learnable end-to-end); False detaches
      them (weights act as constants).
    * ``patch_mask``: patches marked False (unseen under MAC masking) are neither positives,
      nor negatives, nor candidates of the redundancy minimum.
    * ``video_ids``: the other samples of the anchor's video are removed from the denominator
      (the anchor's own partner stays).
    * A sample with no valid token (or patch) contributes 0 to its direction's mean.
    * ``gather``: the denominators run over the global batch without moving any local
      feature between ranks (module docstring); ``local_gather="features"`` moves them.
    """
    _check_local_gather(local_gather)
    with _no_autocast(video_emb.device):
        x, vr, tr = _prepare_with_redundancy(
            video_emb, patch_feats, text_emb, token_feats, token_mask, temperature, patch_mask, video_ids, weight_floor
        )
        w_tok, w_patch = 1.0 - tr, 1.0 - vr  # the paper's w = 1 - redundancy
        if not weight_grad:
            w_tok, w_patch = w_tok.detach(), w_patch.detach()
        log_w_tok = w_tok.clamp_min(weight_floor).log()
        log_w_patch = w_patch.clamp_min(weight_floor).log()
        loss_v2t = _weighted_local_nce(
            x.video, x.video_src, x.tokens, x.token_mask, log_w_tok, x.tau, x.video_ids, gather, local_gather
        )  # eq. (7)
        loss_t2v = _weighted_local_nce(
            x.text, x.text_src, x.patches, x.patch_mask, log_w_patch, x.tau, x.video_ids, gather, local_gather
        )  # eq. (8)
    return loss_v2t, loss_t2v


# --------------------------------------------------------------------------------------
# The released code's variant
# --------------------------------------------------------------------------------------


def _softmax_weights(max_sim: Tensor, mask: Tensor, tau: Tensor) -> Tensor:
    """softmax over the valid positions of max-similarity / tau; all-zero rows where none is valid."""
    logits = torch.where(mask, max_sim / tau, torch.full((), float("-inf"), dtype=max_sim.dtype, device=max_sim.device))
    has = mask.any(1, keepdim=True)
    logits = torch.where(has, logits, torch.zeros_like(logits))
    return torch.where(has & mask, torch.softmax(logits, dim=1), torch.zeros_like(logits))


def _global_to_local_nce(
    anchor: Tensor,
    anchor_src: Tensor,
    locals_: Tensor,
    local_mask: Tensor,
    weights: Tensor,
    tau: Tensor,
    video_ids: Tensor | None,
    gather: Gather,
    double_normalise: bool,
    local_gather: LocalGather,
) -> Tensor:
    """TCL's global-to-local InfoNCE, weighted per local feature, averaged over the anchors.

    For anchor i and each valid local feature m of its partner: positive ``S_i,i,m``, negatives
    the valid local features of every other candidate (not of the anchor's partner, nor of its
    video); ``l_im = -log e^pos / (e^pos + sum e^neg)`` = ``logaddexp(pos, lse(neg)) - pos``.
    """
    pos = _own_scores(anchor, locals_, tau)  # (B, M)
    # Without any negative lse_neg ~ lowest finite value and l = logaddexp(pos, lse_neg) - pos = 0.
    lse_neg = _global_lse(
        anchor, anchor_src, locals_, local_mask, tau, video_ids, gather, drop_own=True, local_gather=local_gather
    )[:, None]
    per_local = torch.logaddexp(pos, lse_neg) - pos
    per_local = torch.where(local_mask, per_local, torch.zeros_like(per_local))
    per_sample = (weights * per_local).sum(1)
    if double_normalise:
        per_sample = per_sample / local_mask.sum(1).clamp_min(1).to(per_sample.dtype)
    return per_sample.mean()


def racl_loss_official(
    video_emb: Tensor,
    patch_feats: Tensor,
    text_emb: Tensor,
    token_feats: Tensor,
    token_mask: Tensor,
    temperature: Temperature,
    *,
    patch_mask: Tensor | None = None,
    weight_grad: bool = True,
    weight_floor: float = 1e-4,
    video_ids: Tensor | None = None,
    gather: Gather = False,
    double_normalise: bool = False,
    local_gather: LocalGather = "anchors",
) -> tuple[Tensor, Tensor]:
    """RaCL as weighted in the authors' released code (``racl_variant: official``).

    Departs from eqs. (7)-(8) the way the release does:

    * Weights: ``softmax_l(max_n s(P_n^i, T_l^i) / tau)`` for the tokens of pair i (v2t) and
      ``softmax_n(max_l s / tau)`` for its patches (t2v) instead of ``1 - redundancy``. Since
      ``max s = 1 - min d`` these are ``softmax((1 - tr)/tau)`` and ``softmax((1 - vr)/tau)``
      built from :func:`redundancy` (eqs. 4-6). They sum to 1 per sample.
    * Loss: TCL's global-to-local InfoNCE, one term per local feature m of the partner (one
      positive ``s(anchor_i, x_m^i)``, negatives = every valid local feature of every other
      sample), combined as ``sum_m w_m l_im`` and averaged over anchors.
    * ``weight_grad=True`` lets gradient reach tau and the local features through the weights
      (as in the release, where tau is learnt through them); False detaches the weights.

    Departures from the release (its defects, fixed here):

    * Padding tokens and masked patches get zero weight and are never negatives; the release
      leaves [PAD] inside the softmax, losing weight mass on padding.
    * No second division by the number of local features (the release divides the already
      normalised weighted sum by the token count or by 256, shrinking these terms 30-250x);
      ``double_normalise=True`` restores it (dividing by the number of valid local features).
    * ``video_ids`` removes the anchor's other same-video samples from the negatives, and
      ``gather=True`` takes negatives from the global batch; the release uses only the per-GPU
      batch (``gather=False`` reproduces that).
    * The release feeds momentum-encoder local features (no gradient); that choice belongs to
      the caller, which passes whichever features it wants here.

    ``weight_floor`` exists for signature compatibility with :func:`racl_loss` and is only
    validated: softmax weights are strictly positive and never enter a log, so no floor is
    needed. Returns ``(loss_v2t, loss_t2v)``, float32 (float64 for float64 inputs) scalars.
    ``gather``/``local_gather`` as in :func:`racl_loss` (no local feature moves between ranks).
    """
    _check_local_gather(local_gather)
    with _no_autocast(video_emb.device):
        x, vr, tr = _prepare_with_redundancy(
            video_emb, patch_feats, text_emb, token_feats, token_mask, temperature, patch_mask, video_ids, weight_floor
        )
        w_tok = _softmax_weights(1.0 - tr, x.token_mask, x.tau)
        w_patch = _softmax_weights(1.0 - vr, x.patch_mask, x.tau)
        if not weight_grad:
            w_tok, w_patch = w_tok.detach(), w_patch.detach()
        loss_v2t = _global_to_local_nce(
            x.video,
            x.video_src,
            x.tokens,
            x.token_mask,
            w_tok,
            x.tau,
            x.video_ids,
            gather,
            double_normalise,
            local_gather,
        )
        loss_t2v = _global_to_local_nce(
            x.text,
            x.text_src,
            x.patches,
            x.patch_mask,
            w_patch,
            x.tau,
            x.video_ids,
            gather,
            double_normalise,
            local_gather,
        )
    return loss_v2t, loss_t2v


# --------------------------------------------------------------------------------------
# Selection helpers (config: loss.racl, loss.racl_variant)
# --------------------------------------------------------------------------------------


def racl_terms(
    direction: Literal["both", "v2t", "t2v", "none"], loss_v2t: Tensor, loss_t2v: Tensor
) -> dict[str, Tensor]:
    """The eq. (9) terms switched on by the Table 5 ablation: ``{"racl_v2t": .., "racl_t2v": ..}``
    for ``both``, one of them for ``v2t``/``t2v``, ``{}`` for ``none``. Sum the values for
    L_RaCL (eq. 9) and scale by lambda for eq. (10)."""
    if direction not in RACL_DIRECTIONS:
        raise ValueError(f"racl direction must be one of {RACL_DIRECTIONS}, got {direction!r}")
    terms: dict[str, Tensor] = {}
    if direction in ("both", "v2t"):
        terms["racl_v2t"] = loss_v2t
    if direction in ("both", "t2v"):
        terms["racl_t2v"] = loss_t2v
    return terms


def racl_function(variant: Literal["paper", "official"]) -> Callable[..., tuple[Tensor, Tensor]]:
    """:func:`racl_loss` for ``paper`` (eqs. 4-8), :func:`racl_loss_official` for ``official``."""
    table = {"paper": racl_loss, "official": racl_loss_official}
    if variant not in table:
        raise ValueError(f"racl_variant must be one of {sorted(table)}, got {variant!r}")
    return table[variant]
