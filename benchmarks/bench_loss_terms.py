"""Each loss term's value and gradient norm at initialisation, under the paper's recipe and the
release's (``train_recipe``), at the paper's shapes with random weights.

Model: ViT-B/16 at 256 px on 4 frames and a BERT-base-sized text encoder (12 x 768, the
built-in vocabulary), both randomly initialised, the 256-d projections; one batch of B clips
(``--batch``, default 30: the paper's per-GPU batch) of random pixels and random captions
(<= 30 tokens). The encoders run once (no gradient); every term is then computed by rap's own
code on those features, with the embeddings, local features and tau as the leaves:

* paper recipe (``scale: paper``'s pre-training loss): ITC eqs. (2)-(3) in-batch, RaCL eqs.
  (7)-(8) on online local features, intra-video against the momentum second view in-batch,
  intra-text SimCSE (a second dropout pass);
* release recipe (``train_recipe: release``): ITC against [momentum batch; queue of 57,600
  random unit vectors] (distillation alpha is 0 at step 0: the ramp starts there), i2i and t2t
  against [momentum; queue], local terms with softmax weights divided again by their count on
  momentum local features (at initialisation the momentum towers equal the online ones).

Reports per term: value, weight in the total, |d term / d features| (the gradient that flows
into the encoders, over every embedding and local feature leaf) and |d term / d tau|; then the
ratios RaCL / ITC of values and of weighted contributions. ITM and LM are the same in both
recipes and left out. What a B-sample process does not measure: the paper's global batch of
1,920 (64 GPUs) adds ln(64) = 4.16 to every in-batch log-denominator at initialisation (the
similarities are then nearly equal); the release's local terms never see more than the
per-GPU batch.

    python benchmarks/bench_loss_terms.py                 # B = 30 (CPU: a few minutes)
    python benchmarks/bench_loss_terms.py --batch 8       # quicker
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rap.config import load_params  # noqa: E402
from rap.losses import itc_loss, racl_loss, racl_loss_official  # noqa: E402
from rap.model import RaPModel  # noqa: E402
from rap.model.momentum import MomentumEncoders  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORDS = "a man woman dog cat red blue car runs jumps over the small big street park ball plays".split()


def paper_shaped_params(recipe: str):
    """``scale: paper`` with random weights and a BERT-base-sized text tower that needs no
    download (the built-in vocabulary); the pre-training loss of ``recipe``."""
    over = {
        "scale": "paper",
        "train_recipe": recipe,
        "model.vision.pretrained": False,
        "model.text": {
            "name": "tiny",
            "pretrained": False,
            "tokenizer": "builtin",
            "hidden_size": 768,
            "num_layers": 12,
            "num_heads": 12,
            "intermediate_size": 3072,
        },
    }
    return load_params(REPO / "params.yaml", over)


def make_batch(model: RaPModel, b: int, k: int, size: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    caps = [
        " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (int(n),), generator=g))
        for n in torch.randint(4, 20, (b,), generator=g)
    ]
    tok = model.tokenizer(caps, padding="longest", truncation=True, max_length=30, return_tensors="pt")
    shape = (b, k, 3, size, size)
    return {
        "video": torch.randint(0, 256, shape, generator=g, dtype=torch.uint8),
        "video_aug": torch.randint(0, 256, shape, generator=g, dtype=torch.uint8),
        "input_ids": tok["input_ids"],
        "attention_mask": tok["attention_mask"],
    }


@torch.no_grad()
def encode(model: RaPModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every feature the terms read: online (training mode: dropout in the text tower) and the
    momentum copy's (equal to the online weights at initialisation; no dropout)."""
    model.train()
    v = model.encode_video(batch["video"])
    t = model.encode_text(batch["input_ids"], batch["attention_mask"])
    t2 = model.encode_text(batch["input_ids"], batch["attention_mask"])  # SimCSE's second pass
    model.eval()
    v_aug = model.encode_video(batch["video_aug"])
    t_m = model.encode_text(batch["input_ids"], batch["attention_mask"])
    return {
        "v": v.emb,
        "patches": v.patches,
        "t": t.emb,
        "tokens": t.tokens,
        "token_mask": t.token_mask,
        "t2": t2.emb,
        "v_aug": v_aug.emb,
        "patches_aug": v_aug.patches,
        "t_m": t_m.emb,
        "tokens_m": t_m.tokens,
    }


def leaves(f: dict[str, torch.Tensor], tau0: float) -> dict[str, torch.Tensor]:
    out = {
        k: (x.clone().requires_grad_(x.is_floating_point()) if k in ("v", "t", "patches", "tokens", "t2") else x)
        for k, x in f.items()
    }
    out["tau"] = torch.tensor(tau0, requires_grad=True)
    return out


def paper_terms(f, loss) -> dict[str, tuple[torch.Tensor, float]]:
    tau = f["tau"]
    v2t, t2v = itc_loss(f["v"], f["t"], tau)
    r_v2t, r_t2v = racl_loss(f["v"], f["patches"], f["t"], f["tokens"], f["token_mask"], tau)
    iv = sum(itc_loss(f["v"], f["v_aug"], tau)) / 2  # the second view through the momentum tower
    it = sum(itc_loss(f["t"], f["t2"], tau)) / 2
    lam = loss.racl_lambda
    return {
        "itc": ((v2t + t2v) / 2, loss.itc_weight),
        "racl_v2t": (r_v2t, lam),
        "racl_t2v": (r_t2v, lam),
        "intra_video": (iv, loss.intra_video_weight),
        "intra_text": (it, loss.intra_text_weight),
    }


def release_terms(f, loss, mom: MomentumEncoders) -> dict[str, tuple[torch.Tensor, float]]:
    tau = f["tau"]
    # alpha = 0 at step 0 (its ramp starts there), so the targets are the ground truth
    i2t, t2i = mom.distilled_itc(f["v"], f["t"], f["v_aug"], f["t_m"], tau, 0.0, None)
    i2i = mom.queue_nce(f["v"], f["v_aug"], "video", tau, None)
    t2t = mom.queue_nce(f["t"], f["t_m"], "text", tau, None)
    r_v2t, r_t2v = racl_loss_official(
        f["v"],
        f["patches_aug"],
        f["t"],
        f["tokens_m"],
        f["token_mask"],
        tau,
        double_normalise=loss.racl_double_normalise,
    )
    lam = loss.racl_lambda
    return {
        "itc": ((i2t + t2i) / 2, loss.itc_weight),
        "racl_v2t": (r_v2t, lam),
        "racl_t2v": (r_t2v, lam),
        "intra_video": (i2i, loss.intra_video_weight),
        "intra_text": (t2t, loss.intra_text_weight),
    }


def measure(terms, f) -> dict[str, dict[str, float]]:
    feats = [f[k] for k in ("v", "t", "patches", "tokens", "t2")]
    out = {}
    for name, (value, weight) in terms.items():
        grads = torch.autograd.grad(value, [*feats, f["tau"]], retain_graph=True, allow_unused=True)
        g_feat = math.sqrt(sum(float(g.pow(2).sum()) for g in grads[:-1] if g is not None))
        g_tau = abs(float(grads[-1])) if grads[-1] is not None else 0.0
        out[name] = {"value": float(value.detach()), "weight": weight, "grad_features": g_feat, "grad_tau": g_tau}
    return out


def report(recipe: str, rows: dict[str, dict[str, float]]) -> None:
    print(f"\n== {recipe} recipe")
    print(f"{'term':<12} {'value':>9} {'weight':>7} {'w*value':>9} {'|dL/dfeat|':>11} {'|dL/dtau|':>10}")
    for name, r in rows.items():
        print(
            f"{name:<12} {r['value']:9.4f} {r['weight']:7.3f} {r['weight'] * r['value']:9.4f} "
            f"{r['grad_features']:11.4g} {r['grad_tau']:10.4g}"
        )
    racl = rows["racl_v2t"]["value"] + rows["racl_t2v"]["value"]
    racl_w = sum(rows[k]["weight"] * rows[k]["value"] for k in ("racl_v2t", "racl_t2v"))
    itc, itc_w = rows["itc"]["value"], rows["itc"]["weight"] * rows["itc"]["value"]
    g_racl = math.hypot(rows["racl_v2t"]["grad_features"], rows["racl_t2v"]["grad_features"])
    print(
        f"RaCL / ITC: values {racl / itc:.4g}, weighted contributions {racl_w / itc_w:.4g}, "
        f"feature-gradient norms {g_racl / rows['itc']['grad_features']:.4g}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    params = {r: paper_shaped_params(r) for r in ("paper", "release")}
    cfg = params["paper"].cfg
    torch.manual_seed(args.seed)
    model = RaPModel(cfg.model, dataclasses.replace(cfg.pretrain.loss, intra_video_weight=0.0))
    batch = make_batch(model, args.batch, cfg.data.frames_train, cfg.data.image_size, args.seed)
    start = time.perf_counter()
    feats = encode(model, batch)
    print(
        f"B = {args.batch}, K = {cfg.data.frames_train}, {cfg.data.image_size} px, N = {feats['patches'].shape[1]} "
        f"patches, L = {feats['tokens'].shape[1]} tokens, D = {feats['v'].shape[1]}; "
        f"encoders {time.perf_counter() - start:.0f} s (random weights)"
    )
    sims = feats["v"] @ feats["t"].T
    print(f"video-text cosine at init: mean {float(sims.mean()):.3f}, sd {float(sims.std()):.3f}")
    tau0 = float(model.temperature.detach())
    results = {}
    loss = params["paper"].cfg.pretrain.loss
    f = leaves(feats, tau0)
    results["paper"] = measure(paper_terms(f, loss), f)
    rel_loss = params["release"].cfg.pretrain.loss
    mom = MomentumEncoders(
        model.vision,
        model.text,
        model.vision_proj,
        model.text_proj,
        queue_size=rel_loss.queue_size,
        m=rel_loss.momentum_m,
        queue_init=rel_loss.queue_init,
    )
    f = leaves(feats, tau0)
    results["release"] = measure(release_terms(f, rel_loss, mom), f)
    for recipe, rows in results.items():
        report(recipe, rows)
    if args.json:
        args.json.write_text(json.dumps({"batch": args.batch, **results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
