"""rap.losses against direct loop implementations of the paper's equations (2)-(8).

The references below loop over samples i, candidates j and local positions l/n with scalar
torch ops, exactly as the equations read; they share no code with rap.losses.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rap.losses import (
    INVALID_REDUNDANCY,
    itc_loss,
    racl_function,
    racl_loss,
    racl_loss_official,
    racl_terms,
    redundancy,
)

B, N, L, D = 4, 6, 5, 8
TAU = 0.1


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


def _unit(*shape, gen, dtype=torch.float64):
    return F.normalize(torch.randn(*shape, generator=gen, dtype=dtype), dim=-1)


def make_batch(seed=0, dtype=torch.float64, with_patch_mask=True):
    """Small batch with ragged text padding and (optionally) MAC-style invalid patches."""
    gen = torch.Generator().manual_seed(seed)
    lengths = [L, 3, 1, 4][:B]
    token_mask = torch.zeros(B, L, dtype=torch.bool)
    for i, n in enumerate(lengths):
        token_mask[i, :n] = True
    patch_mask = None
    if with_patch_mask:
        patch_mask = torch.ones(B, N, dtype=torch.bool)
        patch_mask[0, [1, 4]] = False
        patch_mask[2, 0] = False
    return dict(
        video_emb=_unit(B, D, gen=gen, dtype=dtype),
        patch_feats=_unit(B, N, D, gen=gen, dtype=dtype),
        text_emb=_unit(B, D, gen=gen, dtype=dtype),
        token_feats=_unit(B, L, D, gen=gen, dtype=dtype),
        token_mask=token_mask,
        patch_mask=patch_mask,
    )


def _valid(mask, i, k):
    return mask is None or bool(mask[i, k])


# --------------------------------------------------------------------------------------
# Loop references
# --------------------------------------------------------------------------------------


def ref_itc(v, t, tau, video_ids=None):
    """Eqs. (2)-(3); with video_ids the target is uniform over the same-video candidates."""

    def one_direction(a, c):
        losses = []
        for i in range(len(a)):
            logits = [torch.dot(a[i], c[j]) / tau for j in range(len(c))]
            log_z = torch.log(sum(torch.exp(x) for x in logits))
            pos = [j for j in range(len(c)) if j == i or (video_ids is not None and video_ids[j] == video_ids[i])]
            losses.append(log_z - sum(logits[j] for j in pos) / len(pos))
        return sum(losses) / len(losses)

    return one_direction(v, t), one_direction(t, v)


def ref_redundancy(P, T, token_mask, patch_mask=None):
    """Eqs. (4)-(6), INVALID_REDUNDANCY at invalid positions / without a valid partner."""
    b, n_p, n_t = P.shape[0], P.shape[1], T.shape[1]
    vr = torch.full((b, n_p), INVALID_REDUNDANCY, dtype=P.dtype)
    tr = torch.full((b, n_t), INVALID_REDUNDANCY, dtype=P.dtype)
    for i in range(b):
        for n in range(n_p):
            ds = [1 - torch.dot(P[i, n], T[i, l]) for l in range(n_t) if token_mask[i, l]]
            if _valid(patch_mask, i, n) and ds:
                vr[i, n] = min(ds)
        for l in range(n_t):
            ds = [1 - torch.dot(P[i, n], T[i, l]) for n in range(n_p) if _valid(patch_mask, i, n)]
            if token_mask[i, l] and ds:
                tr[i, l] = min(ds)
    return vr, tr


def _ref_redundancy_lists(P, T, token_mask, patch_mask):
    """Same as ref_redundancy but as nested lists of autograd scalars (differentiable)."""
    b, n_p, n_t = P.shape[0], P.shape[1], T.shape[1]
    vr = [[None] * n_p for _ in range(b)]
    tr = [[None] * n_t for _ in range(b)]
    for i in range(b):
        for n in range(n_p):
            if _valid(patch_mask, i, n):
                vr[i][n] = min(1 - torch.dot(P[i, n], T[i, l]) for l in range(n_t) if token_mask[i, l])
        for l in range(n_t):
            if token_mask[i, l]:
                tr[i][l] = min(1 - torch.dot(P[i, n], T[i, l]) for n in range(n_p) if _valid(patch_mask, i, n))
    return vr, tr


def ref_racl(v, P, t, T, token_mask, tau, patch_mask=None, floor=1e-4, video_ids=None, weight_grad=True):
    """Eqs. (7)-(8) with w = max(1 - redundancy, floor)."""
    vr, tr = _ref_redundancy_lists(P, T, token_mask, patch_mask)
    b = v.shape[0]

    def excluded(i, j):
        return j != i and video_ids is not None and video_ids[j] == video_ids[i]

    def weight(r):
        w = 1 - r
        w = w if weight_grad else w.detach()
        return torch.clamp(w, min=floor)

    def one_direction(anchor, locals_, mask, red):
        losses = []
        for i in range(b):
            num = sum(
                weight(red[i][m]) * torch.exp(torch.dot(anchor[i], locals_[i, m]) / tau)
                for m in range(locals_.shape[1])
                if _valid(mask, i, m)
            )
            den = sum(
                torch.exp(torch.dot(anchor[i], locals_[j, m]) / tau)
                for j in range(b)
                if not excluded(i, j)
                for m in range(locals_.shape[1])
                if _valid(mask, j, m)
            )
            losses.append(-torch.log(num / den))
        return sum(losses) / b

    return one_direction(v, T, token_mask, tr), one_direction(t, P, patch_mask, vr)


def ref_official(v, P, t, T, token_mask, tau, patch_mask=None, video_ids=None, double_normalise=False):
    """Release weighting: softmax over valid positions of max-similarity/tau; TCL global-to-local
    InfoNCE per local feature (positive: that feature; negatives: other samples' locals)."""
    b = v.shape[0]

    def is_negative(i, j):
        return j != i and not (video_ids is not None and video_ids[j] == video_ids[i])

    def one_direction(anchor, locals_, mask, others, other_mask):
        losses = []
        for i in range(b):
            valid = [m for m in range(locals_.shape[1]) if _valid(mask, i, m)]
            max_sim = {
                m: max(
                    torch.dot(locals_[i, m], others[i, k]) for k in range(others.shape[1]) if _valid(other_mask, i, k)
                )
                for m in valid
            }
            z = sum(torch.exp(max_sim[m] / tau) for m in valid)
            neg = [
                torch.exp(torch.dot(anchor[i], locals_[j, m]) / tau)
                for j in range(b)
                if is_negative(i, j)
                for m in range(locals_.shape[1])
                if _valid(mask, j, m)
            ]
            total = 0
            for m in valid:
                pos = torch.exp(torch.dot(anchor[i], locals_[i, m]) / tau)
                total = total + torch.exp(max_sim[m] / tau) / z * -torch.log(pos / (pos + sum(neg)))
            if double_normalise:
                total = total / len(valid)
            losses.append(total)
        return sum(losses) / b

    return (one_direction(v, T, token_mask, P, patch_mask), one_direction(t, P, patch_mask, T, token_mask))


def _args(batch):
    return (batch["video_emb"], batch["patch_feats"], batch["text_emb"], batch["token_feats"], batch["token_mask"])


def _leaf(batch):
    out = dict(batch)
    for k in ("video_emb", "patch_feats", "text_emb", "token_feats"):
        out[k] = batch[k].clone().requires_grad_(True)
    return out


def _grads(loss, batch):
    keys = ("video_emb", "patch_feats", "text_emb", "token_feats")
    return torch.autograd.grad(loss, [batch[k] for k in keys], allow_unused=True, retain_graph=True)


def _assert_close_grads(ga, gb, **tol):
    for a, b in zip(ga, gb):
        a = torch.zeros(()) if a is None else a
        b = torch.zeros(()) if b is None else b
        torch.testing.assert_close(a.expand_as(b) if a.dim() == 0 else a, b.expand_as(a) if b.dim() == 0 else b, **tol)


# --------------------------------------------------------------------------------------
# Eqs. (2)-(3)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("video_ids", [None, torch.tensor([7, 3, 7, 1])])
def test_itc_matches_loop(video_ids):
    batch = make_batch()
    got = itc_loss(batch["video_emb"], batch["text_emb"], TAU, video_ids=video_ids)
    want = ref_itc(batch["video_emb"], batch["text_emb"], TAU, video_ids)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_itc_without_ids_is_cross_entropy():
    batch = make_batch(seed=3)
    logits = batch["video_emb"] @ batch["text_emb"].T / TAU
    v2t, t2v = itc_loss(batch["video_emb"], batch["text_emb"], TAU)
    torch.testing.assert_close(v2t, F.cross_entropy(logits, torch.arange(B)))
    torch.testing.assert_close(t2v, F.cross_entropy(logits.T, torch.arange(B)))


def test_itc_video_ids_unique_is_plain_and_duplicates_change_targets():
    batch = make_batch(seed=4)
    plain = itc_loss(batch["video_emb"], batch["text_emb"], TAU)
    unique = itc_loss(batch["video_emb"], batch["text_emb"], TAU, video_ids=torch.arange(B) * 5)
    dup = itc_loss(batch["video_emb"], batch["text_emb"], TAU, video_ids=torch.tensor([0, 0, 1, 2]))
    torch.testing.assert_close(plain, unique)
    assert abs(float(dup[0] - plain[0])) > 1e-4
    # Two captions of one video with identical embeddings: with ids they are not pushed apart,
    # so the gradient w.r.t. text 1 from anchor video 0 vanishes when video 0 == video 1.
    v = batch["video_emb"].clone()
    v[1] = v[0]
    t = batch["text_emb"].clone()
    t[1] = t[0]
    t.requires_grad_(True)
    loss, _ = itc_loss(v, t, TAU, video_ids=torch.tensor([0, 0, 1, 2]))
    (g,) = torch.autograd.grad(loss, t)
    torch.testing.assert_close(g[0], g[1])  # symmetric: neither caption is a negative of the other


def test_itc_temperature_tensor_gets_gradient():
    batch = make_batch()
    tau = torch.tensor(TAU, dtype=torch.float64, requires_grad=True)
    v2t, t2v = itc_loss(batch["video_emb"], batch["text_emb"], tau)
    (g,) = torch.autograd.grad(v2t + t2v, tau)
    assert torch.isfinite(g) and g.abs() > 0


# --------------------------------------------------------------------------------------
# Eqs. (4)-(6)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_patch_mask", [False, True])
def test_redundancy_matches_loop(with_patch_mask):
    batch = make_batch(with_patch_mask=with_patch_mask)
    vr, tr = redundancy(batch["patch_feats"], batch["token_feats"], batch["token_mask"], patch_mask=batch["patch_mask"])
    assert vr.shape == (B, N) and tr.shape == (B, L)
    ref_vr, ref_tr = ref_redundancy(
        batch["patch_feats"], batch["token_feats"], batch["token_mask"], batch["patch_mask"]
    )
    torch.testing.assert_close(vr, ref_vr)
    torch.testing.assert_close(tr, ref_tr)
    assert torch.all(tr[~batch["token_mask"]] == INVALID_REDUNDANCY)
    if with_patch_mask:
        assert torch.all(vr[~batch["patch_mask"]] == INVALID_REDUNDANCY)


def test_redundancy_padding_is_never_the_argmin():
    """A padding token identical to a patch would have d = 0 (the minimum) if it counted."""
    batch = make_batch(with_patch_mask=True)
    tokens = batch["token_feats"].clone()
    tokens[1, 4] = batch["patch_feats"][1, 2]  # padding position of sample 1
    patches = batch["patch_feats"].clone()
    patches[0, 1] = batch["token_feats"][0, 0]  # masked patch of sample 0
    vr, tr = redundancy(patches, tokens, batch["token_mask"], patch_mask=batch["patch_mask"])
    ref_vr, ref_tr = ref_redundancy(
        batch["patch_feats"], batch["token_feats"], batch["token_mask"], batch["patch_mask"]
    )
    torch.testing.assert_close(vr, ref_vr)
    torch.testing.assert_close(tr, ref_tr)
    assert vr[1, 2] > 1e-3 and tr[0, 0] > 1e-3


# --------------------------------------------------------------------------------------
# Eqs. (7)-(8)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("video_ids", [None, torch.tensor([5, 2, 5, 5])])
@pytest.mark.parametrize("with_patch_mask", [False, True])
@pytest.mark.parametrize("weight_grad", [True, False])
def test_racl_matches_loop_values_and_grads(video_ids, with_patch_mask, weight_grad):
    batch = _leaf(make_batch(seed=1, with_patch_mask=with_patch_mask))
    tau = torch.tensor(TAU, dtype=torch.float64, requires_grad=True)
    got = racl_loss(*_args(batch), tau, patch_mask=batch["patch_mask"], video_ids=video_ids, weight_grad=weight_grad)
    want = ref_racl(*_args(batch), tau, patch_mask=batch["patch_mask"], video_ids=video_ids, weight_grad=weight_grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
        assert g.dtype == torch.float64 and g.dim() == 0
        grads_g = _grads(g, batch) + torch.autograd.grad(g, tau, retain_graph=True)
        grads_w = _grads(w, batch) + torch.autograd.grad(w, tau, retain_graph=True)
        _assert_close_grads(grads_g, grads_w)


def test_racl_weight_floor_keeps_fully_redundant_pairs_finite():
    """Every token opposite to every patch: tr = 2, w = -1 -> clamped to the floor."""
    batch = make_batch(seed=2, with_patch_mask=False)
    d0 = batch["patch_feats"][0, 0]
    batch["patch_feats"][0] = d0
    batch["token_feats"][0] = -d0
    for floor in (1e-4, 1e-2):
        got = racl_loss(*_args(batch), TAU, weight_floor=floor)
        want = ref_racl(*_args(batch), TAU, floor=floor)
        assert all(torch.isfinite(g) for g in got)
        torch.testing.assert_close(got[0], want[0])
    with pytest.raises(ValueError, match="weight_floor"):
        racl_loss(*_args(batch), TAU, weight_floor=0.0)


def test_racl_weight_grad_switch():
    """v2t reaches the patches only through w_l = 1 - tr_l (eq. 6); t2v the tokens only
    through w_n = 1 - vr_n: zero gradient there iff the weights are detached."""
    batch = _leaf(make_batch(seed=5))
    on = racl_loss(*_args(batch), TAU, patch_mask=batch["patch_mask"], weight_grad=True)
    off = racl_loss(*_args(batch), TAU, patch_mask=batch["patch_mask"], weight_grad=False)
    torch.testing.assert_close(on, off)  # same values
    g_on = torch.autograd.grad(on[0], batch["patch_feats"], retain_graph=True)[0]
    g_off = torch.autograd.grad(off[0], batch["patch_feats"], retain_graph=True, allow_unused=True)[0]
    assert g_on.abs().sum() > 0
    assert g_off is None or torch.all(g_off == 0)
    t_on = torch.autograd.grad(on[1], batch["token_feats"], retain_graph=True)[0]
    t_off = torch.autograd.grad(off[1], batch["token_feats"], retain_graph=True, allow_unused=True)[0]
    assert t_on.abs().sum() > 0
    assert t_off is None or torch.all(t_off == 0)
    # and the anchors' gradients differ too (the weights move the numerator)
    v_on = torch.autograd.grad(on[0], batch["token_feats"], retain_graph=True)[0]
    v_off = torch.autograd.grad(off[0], batch["token_feats"], retain_graph=True)[0]
    assert (v_on - v_off).abs().max() > 1e-6


def test_racl_video_ids_drop_only_other_same_video_samples():
    batch = make_batch(seed=6)
    plain = racl_loss(*_args(batch), TAU, patch_mask=batch["patch_mask"])
    unique = racl_loss(*_args(batch), TAU, patch_mask=batch["patch_mask"], video_ids=torch.tensor([9, 8, 7, 6]))
    dup = racl_loss(*_args(batch), TAU, patch_mask=batch["patch_mask"], video_ids=torch.tensor([1, 1, 2, 3]))
    torch.testing.assert_close(plain, unique)
    # Removing candidates from the denominator can only lower the loss.
    assert dup[0] < plain[0] - 1e-6 and dup[1] < plain[1] - 1e-6


def test_racl_sample_without_valid_tokens_contributes_zero():
    batch = make_batch(seed=7)
    batch["token_mask"][2] = False
    got = racl_loss(*_args(_leaf(batch)), TAU, patch_mask=batch["patch_mask"])
    # Reference: sample 2 has no positive in v2t (term 0) and no tokens as candidates anywhere.
    keep = [0, 1, 3]
    sub = {k: (v[keep] if v is not None else None) for k, v in batch.items()}
    ref_v2t_sub = ref_racl(*_args(sub), TAU, patch_mask=sub["patch_mask"])[0]
    # anchors 0, 1, 3 see the same candidates as in the sub-batch (sample 2 has none)
    torch.testing.assert_close(got[0], ref_v2t_sub * 3 / 4)
    assert torch.isfinite(got[1])
    leaf = _leaf(batch)
    total = sum(racl_loss(*_args(leaf), TAU, patch_mask=leaf["patch_mask"]))
    for g in _grads(total, leaf):
        assert g is None or torch.all(torch.isfinite(g))


# --------------------------------------------------------------------------------------
# Padding and masking invariance
# --------------------------------------------------------------------------------------


def _perturb_invalid(batch, seed=11, value=None):
    gen = torch.Generator().manual_seed(seed)
    out = dict(batch)
    tok = batch["token_feats"].detach().clone()
    noise = torch.randn(tok.shape, generator=gen, dtype=tok.dtype) * 5
    tok[~batch["token_mask"]] = noise[~batch["token_mask"]] if value is None else value
    out["token_feats"] = tok
    if batch["patch_mask"] is not None:
        pat = batch["patch_feats"].detach().clone()
        noise = torch.randn(pat.shape, generator=gen, dtype=pat.dtype) * 5
        pat[~batch["patch_mask"]] = noise[~batch["patch_mask"]] if value is None else value
        out["patch_feats"] = pat
    return out


def _extra_padding(batch, extra=3, seed=12):
    gen = torch.Generator().manual_seed(seed)
    out = dict(batch)
    tok = batch["token_feats"].detach()
    pad = torch.randn(B, extra, D, generator=gen, dtype=tok.dtype)
    out["token_feats"] = torch.cat([tok, pad], 1)
    out["token_mask"] = torch.cat([batch["token_mask"], torch.zeros(B, extra, dtype=torch.bool)], 1)
    pat = batch["patch_feats"].detach()
    out["patch_feats"] = torch.cat([pat, torch.randn(B, extra, D, generator=gen, dtype=pat.dtype)], 1)
    pm = batch["patch_mask"] if batch["patch_mask"] is not None else torch.ones(B, N, dtype=torch.bool)
    out["patch_mask"] = torch.cat([pm, torch.zeros(B, extra, dtype=torch.bool)], 1)
    return out


@pytest.mark.parametrize("fn", [racl_loss, racl_loss_official])
def test_padding_has_no_influence(fn):
    base = make_batch(seed=8)
    variants = [_perturb_invalid(base), _perturb_invalid(base, value=float("nan")), _extra_padding(base)]
    ref = _leaf(base)
    ref_losses = fn(*_args(ref), TAU, patch_mask=ref["patch_mask"])
    ref_grads = _grads(sum(ref_losses), ref)
    for var in variants:
        leaf = _leaf(var)
        losses = fn(*_args(leaf), TAU, patch_mask=leaf["patch_mask"])
        torch.testing.assert_close(losses, ref_losses, rtol=0, atol=1e-12)
        grads = _grads(sum(losses), leaf)
        for g, r, key in zip(grads, ref_grads, ("video_emb", "patch_feats", "text_emb", "token_feats")):
            if key in ("video_emb", "text_emb"):
                torch.testing.assert_close(g, r, rtol=0, atol=1e-12)
                continue
            mask = leaf["token_mask"] if key == "token_feats" else leaf["patch_mask"]
            width = r.shape[1]
            torch.testing.assert_close(g[:, :width], r, rtol=0, atol=1e-12)
            assert torch.all(g[~mask] == 0)  # padding gets no gradient either


def test_masked_patch_column_equals_dropping_it():
    """patch_mask False for one position in every sample == that position not existing."""
    batch = make_batch(seed=9, with_patch_mask=False)
    masked = dict(batch, patch_mask=torch.ones(B, N, dtype=torch.bool))
    masked["patch_mask"][:, 3] = False
    keep = [n for n in range(N) if n != 3]
    dropped = dict(batch, patch_feats=batch["patch_feats"][:, keep])
    for fn in (racl_loss, racl_loss_official):
        torch.testing.assert_close(fn(*_args(masked), TAU, patch_mask=masked["patch_mask"]), fn(*_args(dropped), TAU))


# --------------------------------------------------------------------------------------
# Official variant
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("video_ids", [None, torch.tensor([0, 1, 0, 2])])
@pytest.mark.parametrize("double_normalise", [False, True])
def test_official_matches_loop(video_ids, double_normalise):
    batch = _leaf(make_batch(seed=10))
    tau = torch.tensor(TAU, dtype=torch.float64, requires_grad=True)
    got = racl_loss_official(
        *_args(batch), tau, patch_mask=batch["patch_mask"], video_ids=video_ids, double_normalise=double_normalise
    )
    want = ref_official(
        *_args(batch), tau, patch_mask=batch["patch_mask"], video_ids=video_ids, double_normalise=double_normalise
    )
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
        _assert_close_grads(
            _grads(g, batch) + torch.autograd.grad(g, tau, retain_graph=True),
            _grads(w, batch) + torch.autograd.grad(w, tau, retain_graph=True),
        )


def test_official_differs_from_paper_and_weight_grad_detaches():
    batch = _leaf(make_batch(seed=13))
    paper = racl_loss(*_args(batch), TAU, patch_mask=batch["patch_mask"])
    official = racl_loss_official(*_args(batch), TAU, patch_mask=batch["patch_mask"])
    assert abs(float((paper[0] - official[0]).detach())) > 1e-3
    off = racl_loss_official(*_args(batch), TAU, patch_mask=batch["patch_mask"], weight_grad=False)
    torch.testing.assert_close(official, off)
    g = torch.autograd.grad(off[0], batch["patch_feats"], allow_unused=True)[0]
    assert g is None or torch.all(g == 0)


# --------------------------------------------------------------------------------------
# Shapes, dtypes, finite gradients, helpers
# --------------------------------------------------------------------------------------


def test_bad_shapes_and_masks_are_rejected():
    batch = make_batch()
    with pytest.raises(ValueError, match="text_emb"):
        itc_loss(batch["video_emb"], batch["text_emb"][:3], TAU)
    with pytest.raises(ValueError, match="token_mask"):
        racl_loss(*_args(batch)[:4], batch["token_mask"][:, :3], TAU)
    with pytest.raises(ValueError, match="token_mask"):
        racl_loss(*_args(batch)[:4], batch["token_mask"].double(), TAU)
    with pytest.raises(ValueError, match="patch_mask"):
        redundancy(
            batch["patch_feats"],
            batch["token_feats"],
            batch["token_mask"],
            patch_mask=torch.ones(B, N + 1, dtype=torch.bool),
        )
    with pytest.raises(ValueError, match="video_ids"):
        itc_loss(batch["video_emb"], batch["text_emb"], TAU, video_ids=torch.zeros(B + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        itc_loss(batch["video_emb"], batch["text_emb"], 0.0)


@pytest.mark.parametrize("fn", [racl_loss, racl_loss_official])
def test_bf16_runs_and_is_close_to_fp32(fn):
    b32 = make_batch(seed=14, dtype=torch.float32)
    b16 = {k: (v.bfloat16() if v is not None and v.is_floating_point() else v) for k, v in b32.items()}
    for got, want in (
        (fn(*_args(b16), 0.07, patch_mask=b16["patch_mask"]), fn(*_args(b32), 0.07, patch_mask=b32["patch_mask"])),
        (itc_loss(b16["video_emb"], b16["text_emb"], 0.07), itc_loss(b32["video_emb"], b32["text_emb"], 0.07)),
    ):
        for g, w in zip(got, want):
            assert g.dtype == torch.float32 and torch.isfinite(g)
            torch.testing.assert_close(g, w, rtol=3e-2, atol=3e-2)
    leaf = {
        k: (v.clone().requires_grad_(True) if v is not None and v.is_floating_point() else v) for k, v in b16.items()
    }
    sum(fn(*_args(leaf), 0.07, patch_mask=leaf["patch_mask"])).backward()
    assert leaf["video_emb"].grad.dtype == torch.bfloat16 and torch.isfinite(leaf["video_emb"].grad).all()


def test_autocast_does_not_lower_the_loss_precision():
    batch = make_batch(seed=15, dtype=torch.float32)
    plain = racl_loss(*_args(batch), 0.07, patch_mask=batch["patch_mask"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = racl_loss(*_args(batch), 0.07, patch_mask=batch["patch_mask"])
    torch.testing.assert_close(under, plain, rtol=1e-6, atol=1e-6)


def test_gradcheck_all_losses():
    gen = torch.Generator().manual_seed(16)
    b, n, l, d = 3, 4, 3, 5
    v, t = torch.randn(b, d, generator=gen, dtype=torch.float64), torch.randn(b, d, generator=gen, dtype=torch.float64)
    p, k = (
        torch.randn(b, n, d, generator=gen, dtype=torch.float64),
        torch.randn(b, l, d, generator=gen, dtype=torch.float64),
    )
    tm = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    pm = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [0, 1, 1, 1]], dtype=torch.bool)
    tau = torch.tensor(0.5, dtype=torch.float64)
    inputs = [x.clone().requires_grad_(True) for x in (v, p, t, k, tau)]
    for fn in (racl_loss, racl_loss_official):
        assert torch.autograd.gradcheck(
            lambda a, b_, c, e, f: sum(fn(a, b_, c, e, tm, f, patch_mask=pm)), inputs, eps=1e-6, atol=1e-5
        )
    assert torch.autograd.gradcheck(
        lambda a, c, f: sum(itc_loss(a, c, f, video_ids=torch.tensor([0, 1, 0]))),
        [inputs[0], inputs[2], inputs[4]],
        eps=1e-6,
        atol=1e-5,
    )


def test_gather_flag_is_plain_in_a_single_process():
    batch = make_batch(seed=17)
    for fn in (racl_loss, racl_loss_official):
        torch.testing.assert_close(
            fn(*_args(batch), TAU, patch_mask=batch["patch_mask"], gather=True),
            fn(*_args(batch), TAU, patch_mask=batch["patch_mask"]),
        )
    torch.testing.assert_close(
        itc_loss(batch["video_emb"], batch["text_emb"], TAU, gather=True),
        itc_loss(batch["video_emb"], batch["text_emb"], TAU),
    )


def test_racl_terms_and_variant_selection():
    a, b = torch.tensor(1.0), torch.tensor(2.0)
    assert racl_terms("both", a, b) == {"racl_v2t": a, "racl_t2v": b}
    assert racl_terms("v2t", a, b) == {"racl_v2t": a}
    assert racl_terms("t2v", a, b) == {"racl_t2v": b}
    assert racl_terms("none", a, b) == {}
    with pytest.raises(ValueError, match="direction"):
        racl_terms("all", a, b)
    assert racl_function("paper") is racl_loss and racl_function("official") is racl_loss_official
    with pytest.raises(ValueError, match="racl_variant"):
        racl_function("tcl")


def test_racl_loss_is_nonnegative_for_unit_features():
    """With ||x|| = 1, 0 <= w <= 1, so eq. (7)'s ratio is <= 1 and the loss >= 0."""
    for seed in range(3):
        batch = make_batch(seed=20 + seed, dtype=torch.float32)
        v2t, t2v = racl_loss(*_args(batch), 0.07, patch_mask=batch["patch_mask"])
        assert v2t >= -1e-6 and t2v >= -1e-6 and math.isfinite(float(v2t + t2v))


@pytest.mark.parametrize("fn", [racl_loss, racl_loss_official])
def test_no_negatives_gives_finite_gradients(fn):
    """B = 1, or every other sample from the same video: no negatives at all."""
    for keep, ids in (([0], None), ([0, 1, 3], torch.tensor([4, 4, 4]))):
        batch = _leaf({k: (v[keep] if v is not None else None) for k, v in make_batch(seed=18).items()})
        losses = fn(*_args(batch), TAU, patch_mask=batch["patch_mask"], video_ids=ids)
        assert all(torch.isfinite(x) for x in losses)
        if fn is racl_loss_official:  # InfoNCE with only the positive: -log 1 = 0
            torch.testing.assert_close(torch.stack(losses), torch.zeros(2, dtype=torch.float64))
        for g in _grads(sum(losses), batch):
            assert g is None or torch.all(torch.isfinite(g))
