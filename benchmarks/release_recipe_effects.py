"""What each difference between rap's evaluation and the release's does to the fixture's scores.

On the release fixture (tests/fixtures/release/: the release's own models at a small
configuration with perturbed random weights, 6 clips x 8 frames, 6 captions, top k = 3), both
converted by rap.release.importer: start from ``evaluate.recipe: release`` (equal to the
release's evaluation() to 1e-5, tests/test_release.py) and switch ONE difference at a time to
rap's, then all of them (rap's recipe). For each variant, against the release's matrix:

* ``max|d|``: the largest change of a score both variants re-rank (inside the top k of both);
* ``rows``: texts whose top k videos or their order change;
* t2v R@1 / R@5 / MdR, pessimistic ties (6 queries: coarse; the point is which switch moves
  the scores).

Points 3-4 of rap.release.recipe (frame indices on native frames, squash resize) are not
measurable here: the fixture's clips are 8 already decoded frames. The pixel statistics
(CLIP's, which the weights expect, against rap's ImageNet default) are a model setting, not a
recipe difference; they are measured too because evaluating a release file without them is
the mistake the importer prevents.

    PYTHONPATH=. python benchmarks/release_recipe_effects.py
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from rap.config import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from rap.evaluation import rerank_scores  # noqa: E402
from rap.metrics import t2v_v2t_metrics  # noqa: E402
from rap.release.recipe import OUTSIDE_TOP_K, pre_caption, release_video_features  # noqa: E402

from helpers.release import CONFIG, FIXTURE, imported_model  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Recipe:
    itm_tokens: str = "concatenated"  # release; rap: "averaged"
    itm_score: str = "match_logit"  # release; rap: "log_odds"
    fill: str = "release"  # release: -100 outside the top k; rap: ITC order kept
    captions: str = "pre_caption"  # release; rap: "raw"
    pixels: str = "clip"  # what the weights expect; "imagenet": rap's default setting


@torch.inference_mode()
def t2v_matrix(model, frames: torch.Tensor, captions: list[str], k: int, recipe: Recipe) -> torch.Tensor:
    if recipe.pixels == "imagenet":
        model.vision.pixel_mean, model.vision.pixel_std = IMAGENET_MEAN, IMAGENET_STD
    try:
        texts = [pre_caption(c) for c in captions] if recipe.captions == "pre_caption" else captions
        tok = model.tokenizer(
            texts, padding="max_length", truncation=True, max_length=CONFIG["max_len"], return_tensors="pt"
        )
        ids, mask = tok["input_ids"], tok["attention_mask"]
        emb, concatenated = release_video_features(model, frames)
        averaged = model.encode_video(frames)
        itc = model.encode_text(ids, mask).emb @ emb.t()
        top_sim, top_idx = itc.topk(k, dim=1)
        tokens = concatenated if recipe.itm_tokens == "concatenated" else averaged.hidden
        itm = torch.zeros(top_idx.shape)
        for t in range(len(ids)):
            feats = type(averaged)(
                emb=emb, patches=emb, patch_mask=emb, hidden=tokens[top_idx[t]],
                hidden_mask=torch.ones(tokens.shape[:2], dtype=torch.bool)[top_idx[t]],
            )  # fmt: skip
            logits = model.itm_logits(feats, ids[t].expand(k, -1), mask[t].expand(k, -1))
            itm[t] = logits[:, 1] if recipe.itm_score == "match_logit" else logits[:, 1] - logits[:, 0]
        if recipe.fill == "release":
            out = torch.full(itc.shape, OUTSIDE_TOP_K)
            out.scatter_(1, top_idx, itm + top_sim)
            return out.double()
        return rerank_scores(itc, top_idx, itm)
    finally:
        model.vision.pixel_mean, model.vision.pixel_std = model.cfg.vision.pixel_mean, model.cfg.vision.pixel_std


def compare(ref: torch.Tensor, other: torch.Tensor, k: int) -> dict[str, float]:
    """Texts whose top-k order changes, and the t2v metrics of ``other`` (pessimistic ties)."""
    order_ref = ref.argsort(dim=1, descending=True, stable=True)[:, :k]
    order_other = other.argsort(dim=1, descending=True, stable=True)[:, :k]
    m = t2v_v2t_metrics(other, torch.arange(ref.shape[0]))["t2v"]
    return {"rows": int((order_ref != order_other).any(dim=1).sum()), "R@1": m["R@1"], "R@5": m["R@5"], "MdR": m["MdR"]}


def main() -> None:
    frames = torch.load(FIXTURE / "inputs.pt", weights_only=True)["frames"]
    captions = json.loads((FIXTURE / "captions.json").read_text())["raw"]
    k = CONFIG["k_test"]
    variants = {
        "release recipe": Recipe(),
        "ITM on frame-averaged tokens": Recipe(itm_tokens="averaged"),
        "ITM score logit1 - logit0": Recipe(itm_score="log_odds"),
        "outside top k: ITC order (no -100)": Recipe(fill="rap"),
        "captions raw (no pre_caption)": Recipe(captions="raw"),
        "rap recipe (all four)": Recipe("averaged", "log_odds", "rap", "raw"),
        "release recipe, ImageNet pixels": Recipe(pixels="imagenet"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for layout in ("retrieval", "pretrain"):
            model, _, _ = imported_model(layout, Path(tmp) / layout)
            ref = t2v_matrix(model, frames, captions, k, Recipe())
            print(f"\n{layout} checkpoint (t2v, {len(captions)} queries, top k = {k})")
            print(
                f"{'variant':38s} {'max|d| in top k':>16s} {'rows reordered':>15s} {'R@1':>6s} {'R@5':>6s} {'MdR':>5s}"
            )
            for name, recipe in variants.items():
                other = t2v_matrix(model, frames, captions, k, recipe)
                top = (ref != OUTSIDE_TOP_K) & (other != OUTSIDE_TOP_K)
                if recipe.fill == "rap":  # rap lifts its top k by one constant C: compare without it
                    shift = (other - ref)[top]
                    delta = float((shift - shift.median()).abs().max()) if top.any() else float("nan")
                else:
                    delta = float((other - ref)[top].abs().max()) if top.any() else float("nan")
                c = compare(ref, other, k)
                print(f"{name:38s} {delta:16.4f} {c['rows']:15d} {c['R@1']:6.1f} {c['R@5']:6.1f} {c['MdR']:5.1f}")


if __name__ == "__main__":
    main()
