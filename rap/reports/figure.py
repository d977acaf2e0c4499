"""`rap figure`: Figure 3 of the paper, and the redundancy weights RaCL gives to patches and tokens.

For a few test clips and their first caption, each model encodes the video and the caption
(:meth:`RaPModel.encode_video` / :meth:`RaPModel.encode_text`). Two kinds of maps are drawn:

* what the paper's Figure 3 plots (its caption and section 5.6): the [CLS]-query maps, the
  similarity s(T_cls, P_n) of the caption's [CLS] feature with every patch (a heat map over a
  frame) and s(P_cls, T_l) of the video's [CLS] feature with every token (bars);
* beside them, the RaCL weights of eqs. (7)-(8) measured within the pair
  (:func:`rap.losses.redundancy`, eqs. 4-6): patches ``w_n = 1 - vr_n`` as a heat map over the
  frames, tokens ``w_l = 1 - tr_l`` as bars ([SEP] included, as in the loss).

Red = high similarity / weight (low redundancy), blue = low, as in the paper's Figure 3.

The RaCL model (the main run) is drawn beside the model pre-trained without RaCL (the
``racl-none`` ablation run), the paper's baseline. Patch features are averaged over the K
frames position by position (paper 3.2), so a patch *position* has one weight: the same map
is drawn over each shown frame. Colours are scaled per row (min to max of that model's map,
the range printed in the row title) so that the spatial pattern of both models is visible.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from rap.config import Params
from rap.losses import redundancy

DEFAULT_DATASET = "msrvtt"
DEFAULT_SPLIT = "test"
CMAP = "coolwarm"  # blue = high redundancy (low weight), red = low redundancy (high weight)


@dataclass
class Weights:
    """One model's weights for one clip and caption."""

    patch: np.ndarray  # (side, side) 1 - vr over the patch grid; NaN where the patch is invalid
    tokens: list[str]  # caption tokens after [CLS] (padding dropped)
    token: np.ndarray  # (len(tokens),) 1 - tr
    kept: np.ndarray | None = None  # (L-1,) bool: which tokens after [CLS] are in ``tokens``
    cls_patch: np.ndarray | None = None  # (side, side) s(T_cls, P_n): the paper's Figure 3 map
    cls_token: np.ndarray | None = None  # (len(tokens),) s(P_cls, T_l)


@dataclass
class ClipTruth:
    """What the embedded corpus's generator says about one figure clip (rap.data.ground_truth)."""

    coverage: np.ndarray  # (K, G, G) captioned-object coverage of each evaluated frame
    token_labels: list[str | None]  # label of each token after [CLS] (shown / redundant / None)


def localisation_text(w: Weights, truth: ClipTruth) -> str:
    """``patch AUC 0.81, token AUC 0.45`` of this clip's weights against its ground truth
    (rap.redundancy_metrics); "-" where the clip lacks positives or negatives."""
    from rap.redundancy_metrics import patch_separation, token_separation

    def auc(score, *args) -> str:
        try:
            return f"{score(*args)['auc']:.2f}"
        except ValueError:  # the clip lacks positives or negatives
            return "-"

    labels = [lab for lab, keep in zip(truth.token_labels, w.kept) if keep] if w.kept is not None else []
    cover = truth.coverage.mean(0)
    text = f"patch AUC {auc(patch_separation, w.patch, cover)}, token AUC {auc(token_separation, w.token, labels)}"
    if w.cls_patch is not None and w.cls_token is not None:
        text += (
            f"\n[CLS] query: patch {auc(patch_separation, w.cls_patch, cover)}, "
            f"token {auc(token_separation, w.cls_token, labels)}"
        )
    return text


def load_model(params: Params, checkpoint: Path, device: torch.device | str = "cpu"):
    """The RaP model of ``params`` with the weights of ``checkpoint``, in eval mode.

    Every model parameter must come from the checkpoint: a partly loaded model would draw
    meaningless maps."""
    from rap.checkpoint_io import load_model_weights
    from rap.model.rap import RaPModel

    model = RaPModel(params.cfg.model, params.cfg.pretrain.loss)
    result = load_model_weights(model, Path(checkpoint), strict=False)
    if result["missing"]:
        raise RuntimeError(
            f"{checkpoint}: {len(result['missing'])} model tensor(s) missing from the checkpoint "
            f"(was it trained with another model config?): {result['missing'][:5]}"
        )
    return model.to(device).eval()


@torch.no_grad()
def redundancy_weights(
    model, video: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> list[Weights]:
    """Weights ``1 - vr`` (patches) and ``1 - tr`` (tokens) of each pair (video i, caption i),
    eqs. (4)-(8), and the paper's Figure 3 maps s(T_cls, P_n), s(P_cls, T_l). ``video``
    (B, K, 3, H, W) uint8 pixels, as the loaders give (the model normalises them);
    ``input_ids``/``attention_mask`` (B, L)."""
    device = next(model.parameters()).device
    v = model.encode_video(video.to(device, non_blocking=True))
    t = model.encode_text(input_ids.to(device), attention_mask.to(device))
    vr, tr = redundancy(v.patches, t.tokens, t.token_mask, patch_mask=v.patch_mask)
    w_patch = (1.0 - vr).masked_fill(~v.patch_mask, float("nan")).float().cpu().numpy()
    w_token = (1.0 - tr).float().cpu().numpy()
    cls_patch = torch.einsum("bnd,bd->bn", v.patches.float(), t.emb.float())
    cls_patch = cls_patch.masked_fill(~v.patch_mask, float("nan")).cpu().numpy()
    cls_token = torch.einsum("bld,bd->bl", t.tokens.float(), v.emb.float()).cpu().numpy()
    n = w_patch.shape[1]
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{n} patches do not form a square grid; cannot draw the patch map")
    out = []
    for b in range(video.shape[0]):
        keep = t.token_mask[b].cpu().numpy()
        ids = input_ids[b, 1:][torch.from_numpy(keep)].tolist()
        out.append(
            Weights(
                w_patch[b].reshape(side, side),
                model.tokenizer.convert_ids_to_tokens(ids),
                w_token[b][keep],
                keep,
                cls_patch[b].reshape(side, side),
                cls_token[b][keep],
            )
        )
    return out


def _display_frames(video: torch.Tensor) -> np.ndarray:
    """(K, 3, H, W) uint8 -> (K, H, W, 3) uint8 for imshow."""
    return video.permute(0, 2, 3, 1).cpu().numpy()


def _normalised(w: np.ndarray) -> tuple[np.ndarray, float, float]:
    lo, hi = float(np.nanmin(w)), float(np.nanmax(w))
    return (w - lo) / (hi - lo if hi > lo else 1.0), lo, hi


def plot_weights(
    videos: torch.Tensor,
    captions: Sequence[str],
    weights: dict[str, list[Weights]],
    out_png: Path,
    *,
    show_frames: int = 2,
    title: str = "",
    truths: Sequence[ClipTruth] | None = None,
) -> Path:
    """Draw the figure: per clip and model one row of ``show_frames`` frames with the patch
    weight map overlaid, and the token weights as horizontal bars on the right. With ``truths``
    (the embedded corpus), each frame shows the captioned object's outline and each row its
    localisation AUCs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_clips, k = videos.shape[0], videos.shape[1]
    show = np.unique(np.linspace(0, k - 1, min(show_frames, k)).round().astype(int))
    models = list(weights)
    n_rows = n_clips * len(models)
    with_cls = all(w.cls_patch is not None for ws in weights.values() for w in ws)
    max_tokens = max(len(w.tokens) for ws in weights.values() for w in ws)
    row_height = max(2.5, 0.13 * max_tokens)  # room for one readable label per token
    # columns: [the paper's [CLS]-query map over the middle shown frame], the weight map over each
    # shown frame, [the [CLS]-query token bars], the token weight bars
    n_maps = len(show) + int(with_cls)
    bars = 2 if with_cls else 1
    fig = plt.figure(figsize=(2.3 * n_maps + 3.0 * bars + 1.0, row_height * n_rows + 1.4))
    grid = fig.add_gridspec(n_rows, n_maps + bars, width_ratios=[1.0] * n_maps + [1.5] * bars, hspace=0.55, wspace=0.35)
    for c in range(n_clips):
        frames = _display_frames(videos[c])
        for m, name in enumerate(models):
            w = weights[name][c]
            row = c * len(models) + m
            panels = [(f, w.patch, "1-vr") for f in show]
            if with_cls:
                panels.insert(0, (show[len(show) // 2], w.cls_patch, "s(T_cls, P)"))
            for j, (f, values, label) in enumerate(panels):
                heat, lo, hi = _normalised(values)
                ax = fig.add_subplot(grid[row, j])
                h, wd = frames[f].shape[:2]
                ax.imshow(frames[f])
                ax.imshow(
                    np.ma.masked_invalid(heat),
                    cmap=CMAP,
                    vmin=0.0,
                    vmax=1.0,
                    alpha=0.5,
                    extent=(0, wd, h, 0),
                    interpolation="nearest",
                )
                if truths is not None:  # the captioned object: where half of a patch or more shows it
                    cov = truths[c].coverage[f]
                    g = cov.shape[0]
                    centres = (np.arange(g) + 0.5) * (wd / g)
                    ax.contour(
                        centres, (np.arange(g) + 0.5) * (h / g), cov, levels=[0.5], colors="black", linewidths=1.0
                    )
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_xlabel(f"{label} in [{lo:.2f}, {hi:.2f}], frame {f + 1}/{k}", fontsize=6)
                if j == 0:
                    scores = f"\n{localisation_text(w, truths[c])}" if truths is not None else ""
                    ax.set_ylabel(f"{name}{scores}", fontsize=7)
                if j == 0 and m == 0:
                    caption = textwrap.shorten(captions[c], width=90, placeholder=" ...")
                    ax.set_title(f'clip {c + 1}: "{caption}"', fontsize=8, loc="left", style="italic")
            token_panels = [(w.cls_token, "s(P_cls, T_l)")] if with_cls else []
            for b, (values, label) in enumerate(token_panels + [(w.token, "token weight 1-tr")]):
                ax = fig.add_subplot(grid[row, n_maps + b])
                y = np.arange(len(w.tokens))
                tok_norm, _, _ = _normalised(values)
                ax.barh(y, values, color=plt.get_cmap(CMAP)(tok_norm))
                ax.set_yticks(y, w.tokens, fontsize=6)
                ax.invert_yaxis()
                ax.tick_params(axis="x", labelsize=6)
                ax.set_xlabel(label, fontsize=7)
    fig.suptitle(title or "Redundancy weights (RaP Figure 3)", fontsize=10)
    fig.text(
        0.01,
        0.005,
        (
            "s(T_cls, P) / s(P_cls, T_l): what the paper's Figure 3 plots, the similarity of the caption's [CLS] "
            "feature with each patch and of the video's [CLS] feature with each token. "
            if with_cls
            else ""
        )
        + "1-vr / 1-tr: RaCL's weights (eqs. 4-8). Patch features are averaged over the K frames (paper 3.2): "
        "each patch position has one value, drawn over every shown frame. Colours scaled per panel; red = high."
        + (
            " Black: outline of the captioned objects (ground truth of the embedded corpus); AUC: the map "
            "at separating object patches from untouched ones and shown words from redundant phrases "
            "(0.5 = chance; Table 9 pools every test query)."
            if truths is not None
            else ""
        ),
        fontsize=6.5,
        wrap=True,
    )
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return out_png


def _truth_entries(params: Params, eval_set) -> list[dict]:
    """The ground-truth line of every video of ``eval_set``, in its order (read once)."""
    from rap.data import ground_truth as gt
    from rap.localisation import video_key

    cfg = params.cfg
    truth = gt.load_ground_truth(gt.truth_index_path(cfg.data.root, eval_set.dataset))
    return [truth[video_key(cfg, eval_set.dataset, clip.record.path)] for clip in eval_set.videos.clips]


def _coverage(params: Params, entry: dict) -> np.ndarray:
    from rap.localisation import evaluated_coverage

    return evaluated_coverage(params.cfg, entry)["per_frame"]


def informative_clips(params: Params, eval_set, entries: Sequence[dict], clips: int) -> list[int]:
    """The first ``clips`` videos whose first query both patch and token AUCs are defined for:
    some patch the object covers in half of the frames or more, and a redundant phrase in the
    caption (chosen from the ground truth alone, never from a model's weights)."""
    from rap.data import ground_truth as gt
    from rap.localisation import caption_truth
    from rap.redundancy_metrics import OBJECT_MIN

    chosen = []
    for v, entry in enumerate(entries):
        caption = caption_truth(entry, eval_set.texts[eval_set.video_to_texts[v][0]])
        redundant = caption is not None and any(kind == gt.REDUNDANT_PHRASE for *_, kind in caption["spans"])
        if redundant and (_coverage(params, entry).mean(0) >= OBJECT_MIN).any():
            chosen.append(v)
            if len(chosen) == clips:
                return chosen
    return chosen + [v for v in range(len(eval_set.videos)) if v not in chosen][: clips - len(chosen)]


def clip_truths(
    params: Params,
    entries: Sequence[dict],
    videos: Sequence[int],
    captions: Sequence[str],
    offsets: list[list[list[int]]],
) -> list[ClipTruth]:
    """The ground truth of the figure's clips as drawn: per evaluated frame the object
    coverage, per token after [CLS] its label."""
    from rap.data import ground_truth as gt
    from rap.localisation import caption_truth

    out = []
    for i, (v, text) in enumerate(zip(videos, captions)):
        entry = entries[v]
        caption = caption_truth(entry, text)
        labels = gt.token_labels(caption, [tuple(o) for o in offsets[i]])[1:] if caption else []
        out.append(ClipTruth(_coverage(params, entry), labels))
    return out


def draw_figure(
    params: Params,
    racl_ckpt: Path,
    baseline_ckpt: Path,
    out_png: Path,
    *,
    dataset: str = DEFAULT_DATASET,
    split: str = DEFAULT_SPLIT,
    clips: int = 2,
    show_frames: int = 2,
    device: str | None = None,
    track: bool = True,
) -> Path:
    """Figure 3 for ``clips`` videos of ``dataset``/``split`` (first caption each; on the embedded
    corpus the first ones both localisation scores are defined for, :func:`informative_clips`):
    the RaCL model (``racl_ckpt``) beside the model trained without RaCL (``baseline_ckpt``).
    Writes ``out_png`` and, with ``track``, logs it to the stage's MLflow run."""
    from rap import tracking
    from rap.data.datasets import build_eval_set
    from rap.localisation import has_ground_truth
    from rap.reports.layout import format_value

    eval_set = build_eval_set(dataset, split, params.cfg)
    if len(eval_set.videos) < clips:
        raise ValueError(f"{dataset}/{split} has {len(eval_set.videos)} videos, fewer than clips={clips}")
    entries = _truth_entries(params, eval_set) if has_ground_truth(params.cfg, dataset) else None
    chosen = informative_clips(params, eval_set, entries, clips) if entries is not None else list(range(clips))
    items = [eval_set.videos[i] for i in chosen]
    failed = [it["failed"] for it in items if it["failed"]]
    if failed:
        raise RuntimeError(f"{dataset}/{split}: cannot decode a clip for the figure: {failed[0]}")
    videos = torch.stack([it["video"] for it in items])
    captions = [eval_set.texts[eval_set.video_to_texts[i][0]] for i in chosen]
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    weights: dict[str, list[Weights]] = {}
    truths = None
    for name, ckpt in (("RaCL (RaP)", racl_ckpt), ("w/o RaCL", baseline_ckpt)):
        model = load_model(params, ckpt, dev)
        tok = model.tokenizer(
            captions,
            padding="longest",
            truncation=True,
            max_length=params.cfg.model.text.max_len_eval,
            return_tensors="pt",
            return_offsets_mapping=True,
        )
        weights[name] = redundancy_weights(model, videos, tok["input_ids"], tok["attention_mask"])
        if truths is None and entries is not None:
            truths = clip_truths(params, entries, chosen, captions, tok["offset_mapping"].tolist())
        del model
    title = (
        f"Redundancy weights on {dataset} {split} (scale {params.scale}, "
        f"{format_value(params.cfg.data.frames_eval)} frames): the paper's [CLS]-query maps and RaCL's "
        "weights, RaCL vs w/o RaCL"
    )
    if not track:
        return plot_weights(
            videos, captions, weights, Path(out_png), show_frames=show_frames, title=title, truths=truths
        )
    with tracking.stage_run("figure", params):
        out = plot_weights(
            videos, captions, weights, Path(out_png), show_frames=show_frames, title=title, truths=truths
        )
        tracking.log_artifact(out)
    return out
