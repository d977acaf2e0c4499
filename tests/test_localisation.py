"""The redundancy-localisation metric (rap/localisation.py): paragraph captions, the pooled and
per-pair scores on a hand-computed case, and the whole path from a split's ground truth to the
metric with weights planted where the ground truth says they belong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rap import localisation
from rap.data import ground_truth as gt
from rap.data.datasets import build_eval_set
from rap.model import build_tokenizer
from rap.model.features import TextFeatures, VideoFeatures
from rap.redundancy_metrics import OBJECT_MIN


def test_paragraph_queries_find_their_spans() -> None:
    entry = {
        "captions": [
            {"text": "a red circle moves left", "spans": [[2, 5, gt.SHOWN], [6, 12, gt.SHOWN]]},
            {"text": " in a sunny field.", "spans": [[1, 17, gt.REDUNDANT_PHRASE]]},
        ]
    }
    assert localisation.caption_truth(entry, "a red circle moves left") is entry["captions"][0]
    para = localisation.caption_truth(entry, "a red circle moves left in a sunny field.")
    words = {para["text"][a:b]: kind for a, b, kind in para["spans"]}
    assert words == {"red": gt.SHOWN, "circle": gt.SHOWN, "in a sunny field": gt.REDUNDANT_PHRASE}
    assert localisation.caption_truth(entry, "something else") is None


def test_pooled_and_per_pair_scores_by_hand() -> None:
    pooled = localisation._Pooled()
    yes, no = np.array([True, True, False, False]), np.array([False, False, True, True])
    # pair 1 ranks its positives first (AUC 1); pair 2 is inverted (AUC 0)
    pooled.add({"paper": np.array([0.9, 0.8, 0.1, 0.2]), "official": np.array([0.4, 0.3, 0.1, 0.2])}, yes, no)
    pooled.add({"paper": np.array([0.3, 0.4, 0.7, 0.6]), "official": np.array([0.1, 0.1, 0.4, 0.4])}, yes, no)
    out = pooled.summary()
    assert out["pair_auc"] == pytest.approx(0.5) and out["pairs"] == 2
    # paper, pooled: positives 0.9 0.8 0.3 0.4 vs negatives 0.1 0.2 0.7 0.6:
    # 0.9, 0.8 beat all 4; 0.3, 0.4 beat 2 each -> 12 / 16
    assert out["paper"]["auc"] == pytest.approx(12 / 16)
    # official: 0.4 0.3 0.1 0.1 vs 0.1 0.2 0.4 0.4: 0.4 beats 2 and ties 2 (3), 0.3 beats 2,
    # each 0.1 ties one (0.5) -> (3 + 2 + 0.5 + 0.5) / 16
    assert out["official"]["auc"] == pytest.approx(6 / 16)
    assert out["paper"]["positives"] == 4 and out["paper"]["negatives"] == 4
    single = localisation._Pooled()
    single.add(
        {"paper": np.array([0.5, 0.2]), "official": np.array([0.5, 0.2])},
        np.array([True, True]),
        np.array([False, False]),
    )
    assert single.summary() == {"pairs": 0}  # one class only: no AUC


class _Planted(torch.nn.Module):
    """Encoders whose local features put the weights exactly where the ground truth says:
    patches a captioned object touches and the words the frames show share direction e1;
    background patches (e2), redundant-phrase tokens (e3) and other tokens (e4) match nothing."""

    def __init__(self, eval_set, cfg, tokenizer) -> None:
        super().__init__()
        self.temperature = torch.tensor(0.07)
        truth = gt.load_ground_truth(gt.truth_index_path(cfg.data.root, eval_set.dataset))
        self.coverage = []
        for clip in eval_set.videos.clips:
            entry = truth[localisation.video_key(cfg, eval_set.dataset, clip.record.path)]
            cov = localisation.evaluated_coverage(cfg, entry)
            self.coverage.append(torch.from_numpy(cov["averaged"].ravel()))
        self.next_video = 0
        self.labels = {}
        for v, texts in enumerate(eval_set.video_to_texts):
            entry = truth[localisation.video_key(cfg, eval_set.dataset, eval_set.videos.clips[v].record.path)]
            for t in texts:
                caption = localisation.caption_truth(entry, eval_set.texts[t])
                enc = tokenizer(
                    caption["text"],
                    truncation=True,
                    max_length=cfg.model.text.max_len_eval,
                    return_offsets_mapping=True,
                )
                self.labels[tuple(enc["input_ids"])] = gt.token_labels(caption, enc["offset_mapping"])

    def encode_video(self, video: torch.Tensor) -> VideoFeatures:
        e = torch.eye(4)
        covs = self.coverage[self.next_video : self.next_video + len(video)]
        self.next_video += len(video)
        patches = torch.stack([torch.where((c > 0)[:, None], e[0], e[1]) for c in covs])
        b, n = patches.shape[:2]
        cls = e[0].expand(b, 4)  # P_cls: the object's direction, so s(P_cls, T_l) finds the shown words
        return VideoFeatures(
            cls, patches, torch.ones(b, n, dtype=torch.bool), patches, torch.ones(b, n + 1, dtype=torch.bool)
        )

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        e = torch.eye(4)
        labels = self.labels[tuple(input_ids[0][attention_mask[0].bool()].tolist())][1:]
        rows = [e[0] if lab == gt.SHOWN else e[2] if lab == gt.REDUNDANT_PHRASE else e[3] for lab in labels]
        tokens = torch.stack(rows)[None]
        return TextFeatures(e[0][None], tokens, attention_mask[:, 1:].bool(), tokens)  # T_cls: e1


def test_planted_weights_localise_perfectly(make_params) -> None:
    params = make_params()
    cfg = params.cfg
    eval_set = build_eval_set("msrvtt", "test", cfg)
    assert localisation.has_ground_truth(cfg, "msrvtt")
    tokenizer = build_tokenizer(cfg.model.text)
    out = localisation.localisation_metrics(_Planted(eval_set, cfg, tokenizer), tokenizer, eval_set, cfg, "cpu")
    n_obj = sum(int((c >= OBJECT_MIN).sum()) for c in _Planted(eval_set, cfg, tokenizer).coverage)
    assert out["patch"]["paper"]["positives"] == n_obj > 0
    for part in ("patch", "token"):
        assert out[part]["paper"]["auc"] == 1.0 and out[part]["paper"]["ap"] == 1.0
        assert out[part]["official"]["auc"] == 1.0
        assert out[part]["cls_query"]["auc"] == 1.0  # the paper's Figure 3 maps
        assert out[part]["pair_auc"] == 1.0
    assert out["token"]["paper"]["negatives"] > 0  # redundant phrases are in the test captions
    probe = localisation.redundancy_probe(_Planted(eval_set, cfg, tokenizer), tokenizer, eval_set, cfg, "cpu")
    assert probe["localisation"] == out
    diag = probe["diagnostics"]
    assert diag["videos"] == len(eval_set.videos) and diag["pairs"] == len(eval_set.texts)
    # object patches (e1) share the shown words' direction; background patches (e2) none of the tokens'
    assert diag["object_token_alignment"] > 0.3 and diag["background_token_alignment"] == pytest.approx(0.0)
    assert 0 < diag["token_collapse"] < 1 and 0 < diag["patch_spread"] < 1


def test_scored_in_eval_mode_whatever_mode_the_model_was_in(make_params) -> None:
    """Issue 20: `rap evaluate` hands the model over in training mode; the scores must not carry
    dropout (the text tower's 0.1 here), and the model's own mode comes back."""
    from rap.model.rap import RaPModel

    cfg = make_params().cfg
    assert cfg.model.text.dropout is None  # BERT's own 0.1: dropout is on in training mode
    eval_set = build_eval_set("msrvtt", "test", cfg)
    torch.manual_seed(0)
    model = RaPModel(cfg.model, cfg.pretrain.loss)
    outs = {}
    for training in (True, False):
        model.train(training)
        torch.manual_seed(1)
        outs[training] = localisation.redundancy_probe(model, model.tokenizer, eval_set, cfg, torch.device("cpu"))
        assert model.training is training
    assert outs[True] == outs[False]
    assert outs[True]["localisation"]["patch"]["cls_query"]["positives"] > 0


def test_feature_diagnostics_by_hand() -> None:
    from rap.feature_diagnostics import FeatureDiagnostics, mean_pairwise_cosine, spread

    # three unit rows: cosines e1.e2 = 0, e1.(e1+e2)/sqrt2 = e2.(e1+e2)/sqrt2 = 1/sqrt2
    rows = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert mean_pairwise_cosine(rows) == pytest.approx(2 / np.sqrt(2) / 3)
    assert mean_pairwise_cosine(rows[:1]) is None
    assert spread(np.array([[2.0, 0.0], [1.0, 0.0]])) == pytest.approx(0.0)
    assert spread(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(1.0)
    d = FeatureDiagnostics()
    patches = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    d.add_video(patches, np.array([True, True, False]))
    # tokens along e1 only: the mean token direction is e1
    d.add_pair(patches, np.array([True, True, True]), np.array([[1.0, 0.0], [2.0, 0.0]]), np.array([True, True]),
               coverage=np.array([1.0, 0.0, 0.3]))  # fmt: skip
    out = d.summary()
    assert out["patch_collapse"] == pytest.approx(0.0) and out["token_collapse"] == pytest.approx(1.0)
    assert out["object_token_alignment"] == pytest.approx(1.0)
    assert out["background_token_alignment"] == pytest.approx(0.0)
    assert out["patch_token_alignment"] == pytest.approx((1.0 + 0.0 + 0.6) / 3)
    assert (out["videos"], out["pairs"]) == (1, 1)


def test_public_data_has_no_ground_truth(tmp_path: Path, make_params) -> None:
    cfg = make_params({"data.root": str(tmp_path)}).cfg
    gt.truth_index_path(tmp_path, "msrvtt").parent.mkdir(parents=True)
    gt.truth_index_path(tmp_path, "msrvtt").write_text("")  # what extract writes without a sidecar
    assert not localisation.has_ground_truth(cfg, "msrvtt")
