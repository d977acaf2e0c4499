"""Evaluation: ITC ranking, ITM re-ranking of the top k (against a brute-force reference), and
``rap evaluate`` end to end on a synthetic MSVD split with a tiny real model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from rap.config import EvalConfig, load_params
from rap.data.datasets import EvalSet
from rap.evaluation import evaluate, rerank_scores, run_evaluation, run_info_path, score_matrices
from rap.metrics import retrieval_ranks
from rap.model.features import TextFeatures, VideoFeatures

from helpers.mlflow_search import search_runs

REPO = Path(__file__).resolve().parents[1]
TEXT_OFFSET = 10  # stub token id of text i is i + TEXT_OFFSET


# --------------------------------------------------------------------------------------
# Stubs: they carry identities through the tensors, so the test sees which video and which
# text every call received (the ranking logic is what is under test here).
# --------------------------------------------------------------------------------------


class StubVideos(Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return {"video": torch.full((2, 3, 2, 2), float(i)), "video_index": i, "failed": ""}


class StubTokenizer:
    """``"text 7"`` -> ``[CLS]=1, 7 + TEXT_OFFSET, [SEP]=2`` (+ padding to the longest)."""

    def __call__(self, texts, padding, truncation, max_length, return_tensors):
        ids = torch.zeros(len(texts), 4, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, text in enumerate(texts):
            n = int(text.split()[1])
            toks = [1, n + TEXT_OFFSET, 2] + ([5] if n % 2 else [])  # odd texts are one token longer
            ids[row, : len(toks)] = torch.tensor(toks)
            mask[row, : len(toks)] = 1
        width = int(mask.sum(1).max())
        return {"input_ids": ids[:, :width], "attention_mask": mask[:, :width]}


class StubModel(nn.Module):
    def __init__(self, video_emb: torch.Tensor, text_emb: torch.Tensor, itm: torch.Tensor):
        super().__init__()
        self.register_buffer("v", video_emb)
        self.register_buffer("t", text_emb)
        self.register_buffer("itm", itm)  # (T, V) the ITM logit of every pair
        self.layer = nn.Linear(1, 1)  # something to put in eval mode
        self.video_calls = 0
        self.pairs: list[tuple[int, int]] = []

    def encode_video(self, video):
        assert torch.is_inference_mode_enabled() and not self.training
        self.video_calls += 1
        ids = video[:, 0, 0, 0, 0].long()
        b, d = len(ids), self.v.shape[1]
        hidden = ids.float()[:, None, None].expand(b, 3, 1)  # the video's identity, for itm_scores
        return VideoFeatures(
            emb=self.v[ids] * 3.0,  # not unit length: evaluation normalises
            patches=torch.zeros(b, 2, d),
            patch_mask=torch.ones(b, 2, dtype=torch.bool),
            hidden=hidden,
            hidden_mask=torch.ones(b, 3, dtype=torch.bool),
        )

    def encode_text(self, input_ids, attention_mask):
        assert torch.is_inference_mode_enabled() and not self.training
        ids = input_ids[:, 1] - TEXT_OFFSET
        b = len(ids)
        return TextFeatures(
            emb=self.t[ids],
            tokens=torch.zeros(b, 1, 1),
            token_mask=attention_mask[:, 1:].bool(),
            hidden=torch.zeros(b, input_ids.shape[1], 1),
        )

    def itm_scores(self, video_feats, input_ids, attention_mask, video_rows=None):
        assert torch.is_inference_mode_enabled()
        v = video_feats.hidden[:, 0, 0].long()
        if video_rows is not None:
            assert len(torch.unique(v)) == len(v), "a video sent twice in one batch"
            v = v[video_rows]
        t = input_ids[:, 1] - TEXT_OFFSET
        # padding trimmed to the batch's longest text, and the mask travels with the ids
        assert attention_mask.shape == input_ids.shape and bool(attention_mask[:, -1].any())
        self.pairs += list(zip(t.tolist(), v.tolist()))
        return self.itm[t, v]


def _eval_set(text_to_video: list[int], num_videos: int) -> EvalSet:
    v2t = [[i for i, v in enumerate(text_to_video) if v == vid] for vid in range(num_videos)]
    return EvalSet(
        "stub",
        "test",
        StubVideos(num_videos),
        [f"text {i}" for i in range(len(text_to_video))],
        list(text_to_video),
        v2t,
    )


def _reference_ranks(itc: torch.Tensor, itm: torch.Tensor, correct: list[set[int]], k: int) -> list[int]:
    """Brute force, row by row: top k by ITC re-sorted by ITM + ITC, then the rest by ITC.
    Ties (none with random scores) would go against the query, as in rap.metrics."""
    ranks = []
    for q in range(itc.shape[0]):
        by_itc = sorted(range(itc.shape[1]), key=lambda c: -float(itc[q, c]))
        top = sorted(by_itc[:k], key=lambda c: -(float(itm[q, c]) + float(itc[q, c])))
        order = top + by_itc[k:]
        ranks.append(1 + next(pos for pos, c in enumerate(order) if c in correct[q]))
    return ranks


# --------------------------------------------------------------------------------------
# rerank_scores
# --------------------------------------------------------------------------------------


def test_rerank_scores_hand_case():
    itc = torch.tensor([[0.5, 0.4, 0.3, 0.2, 0.1]])
    top = torch.tensor([[0, 1]])
    itm = torch.tensor([[-1.0, 2.0]])
    final = rerank_scores(itc, top, itm)
    # top 2 re-ordered by ITM + ITC (1: 2.4 > 0: -0.5), the rest keeps its ITC order and values
    assert final.argsort(dim=1, descending=True).tolist() == [[1, 0, 2, 3, 4]]
    assert torch.equal(final[0, 2:], itc[0, 2:].double())
    assert float(final[0, 0] - final[0, 1]) == pytest.approx(-0.5 - 2.4)
    assert retrieval_ranks(final, [3]).tolist() == [4]  # beyond k: its ITC rank, not a fill tie


def test_rerank_scores_keep_top_k_above_everything_with_extreme_itm():
    itc = torch.tensor([[0.9, 0.8, 0.7], [0.1, 0.95, 0.2]])
    top = torch.tensor([[0], [1]])
    itm = torch.tensor([[-1000.0], [-5000.0]])
    final = rerank_scores(itc, top, itm)
    assert final.argmax(dim=1).tolist() == [0, 1]
    assert final[0, 1] > final[0, 2] and final[1, 2] > final[1, 0]


def test_rerank_scores_rejects_bad_input():
    with pytest.raises(ValueError, match="non-finite"):
        rerank_scores(torch.zeros(1, 3), torch.tensor([[0]]), torch.tensor([[float("nan")]]))
    with pytest.raises(ValueError, match="do not fit"):
        rerank_scores(torch.zeros(2, 3), torch.tensor([[0]]), torch.tensor([[0.0]]))


# --------------------------------------------------------------------------------------
# evaluate / score_matrices with the stub model
# --------------------------------------------------------------------------------------


def _random_setup(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    text_to_video = [0, 0, 1, 2, 2, 2, 3, 4, 5, 6, 6, 1]  # several captions for some videos
    num_videos, dim = 7, 6
    v = torch.randn(num_videos, dim, generator=g)
    t = torch.randn(len(text_to_video), dim, generator=g)
    itm = torch.randn(len(text_to_video), num_videos, generator=g) * 2
    return text_to_video, num_videos, v, t, itm


@pytest.mark.parametrize("k", [0, 3, 50])
def test_evaluate_matches_brute_force_reference(k):
    text_to_video, num_videos, v, t, itm = _random_setup()
    model = StubModel(v, t, itm).train()
    scores = score_matrices(
        model, StubTokenizer(), _eval_set(text_to_video, num_videos), EvalConfig(batch_size=4, itm_rerank_k=k), "cpu"
    )
    assert model.training  # restored
    assert model.video_calls == 2  # 7 videos in batches of 4: encoded once
    itc = torch.nn.functional.normalize(t, dim=-1) @ torch.nn.functional.normalize(v, dim=-1).t()
    torch.testing.assert_close(scores.itc, itc)

    kk = min(k, num_videos)
    correct_t2v = [{vid} for vid in text_to_video]
    want_t2v = _reference_ranks(itc, itm, correct_t2v, kk)
    assert retrieval_ranks(scores.t2v, text_to_video).tolist() == want_t2v
    correct_v2t = [{i for i, x in enumerate(text_to_video) if x == vid} for vid in range(num_videos)]
    want_v2t = _reference_ranks(itc.t(), itm.t(), correct_v2t, min(k, len(text_to_video)))
    got_v2t = retrieval_ranks(scores.v2t, [sorted(c) for c in correct_v2t]).tolist()
    assert got_v2t == want_v2t

    # ITM only on the top-k pairs of each direction, each pair once
    expected_pairs = set()
    if k:
        for q in range(len(text_to_video)):
            expected_pairs |= {(q, c) for c in itc[q].topk(kk).indices.tolist()}
        for vid in range(num_videos):
            expected_pairs |= {(q, vid) for q in itc[:, vid].topk(min(k, len(text_to_video))).indices.tolist()}
    assert len(model.pairs) == len(set(model.pairs))
    assert set(model.pairs) == expected_pairs

    metrics = evaluate(
        StubModel(v, t, itm),
        StubTokenizer(),
        _eval_set(text_to_video, num_videos),
        EvalConfig(batch_size=4, itm_rerank_k=k),
        "cpu",
    )
    assert set(metrics) == {"t2v", "v2t"}
    assert metrics["t2v"]["MnR"] == pytest.approx(sum(want_t2v) / len(want_t2v))
    assert metrics["v2t"]["MnR"] == pytest.approx(sum(want_v2t) / len(want_v2t))


def test_itm_rerank_fixes_what_itc_gets_wrong():
    # ITC puts each text's correct video second; ITM knows better. k = 2 recovers every query,
    # k = 0 (ITC only) finds none at rank 1.
    n = 4
    v = torch.eye(n)
    t = torch.stack([torch.eye(n)[(i + 1) % n] * 1.0 + torch.eye(n)[i] * 0.5 for i in range(n)])
    itm = torch.eye(n) * 10.0
    es = _eval_set(list(range(n)), n)
    itc_only = evaluate(StubModel(v, t, itm), StubTokenizer(), es, EvalConfig(batch_size=3, itm_rerank_k=0), "cpu")
    reranked = evaluate(StubModel(v, t, itm), StubTokenizer(), es, EvalConfig(batch_size=3, itm_rerank_k=2), "cpu")
    assert itc_only["t2v"]["R@1"] == 0.0 and itc_only["t2v"]["MdR"] == 2.0
    assert reranked["t2v"]["R@1"] == 100.0 and reranked["v2t"]["R@1"] == 100.0


def test_collapsed_model_scores_no_better_than_chance():
    n = 6
    model = StubModel(torch.ones(n, 4), torch.ones(n, 4), torch.zeros(n, n))
    for k in (0, 3):
        m = evaluate(
            model, StubTokenizer(), _eval_set(list(range(n)), n), EvalConfig(batch_size=4, itm_rerank_k=k), "cpu"
        )
        assert m["t2v"]["R@1"] <= 100 / n and m["v2t"]["R@1"] <= 100 / n


def test_evaluate_rejects_bad_config():
    text_to_video, num_videos, v, t, itm = _random_setup()
    es = _eval_set(text_to_video, num_videos)
    with pytest.raises(ValueError, match="itm_rerank_k"):
        evaluate(StubModel(v, t, itm), StubTokenizer(), es, EvalConfig(batch_size=4, itm_rerank_k=-1), "cpu")
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(StubModel(v, t, itm), StubTokenizer(), es, EvalConfig(batch_size=0, itm_rerank_k=0), "cpu")


# --------------------------------------------------------------------------------------
# rap evaluate end to end: synthetic MSVD (many captions per video), tiny real model
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def msvd_params(tmp_path_factory):
    from rap.data.synthetic import generate

    root = tmp_path_factory.mktemp("data")
    generate("msvd", root / "raw" / "msvd", seed=0, scale=0.05)
    return load_params(
        REPO / "params.yaml", {"data.root": str(root), "evaluate.itm_rerank_k": 3, "evaluate.batch_size": 8}
    )


def test_run_evaluation_end_to_end(msvd_params, tmp_path, monkeypatch):
    from rap.model.rap import RaPModel

    for var in ("RAP_TRACKING", "RANK", "DVC_STAGE", "DVC_EXP_NAME"):
        monkeypatch.delenv(var, raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "rap-eval-test")
    monkeypatch.setenv("RAP_PIPELINE_RUN_ID", "eval-e2e")
    torch.manual_seed(0)
    model = RaPModel(msvd_params.cfg.model, msvd_params.cfg.pretrain.loss)
    ckpt = tmp_path / "checkpoint.pt"
    torch.save({"model": model.state_dict(), "stage": "pretrain", "step": 0}, ckpt)

    out = tmp_path / "eval" / "metrics.json"
    result = run_evaluation(msvd_params, "msvd", "test", ckpt, out)
    written = json.loads(out.read_text())
    # metrics only; no ground truth here: the features' diagnostics without the localisation
    assert written == result and set(written) == {"t2v", "v2t", "itc_only", "ci95", "diagnostics"}
    assert written["diagnostics"]["videos"] == 4 and -1 <= written["diagnostics"]["token_collapse"] <= 1
    assert "background_token_alignment" not in written["diagnostics"]
    info = json.loads(run_info_path(out).read_text())
    assert info["dataset"] == "msvd" and info["split"] == "test" and info["checkpoint"] == str(ckpt)
    assert info["num_videos"] == 4 and info["num_queries"] > info["num_videos"]  # multi-caption
    assert info["itm_rerank_k"] == 3 and info["failed_videos"] == 0
    for direction in ("t2v", "v2t"):
        m = written[direction]
        assert set(m) == {"R@1", "R@5", "R@10", "MdR", "MnR"}
        assert 0 <= m["R@1"] <= m["R@5"] <= m["R@10"] <= 100
        assert 1 <= m["MdR"] and 1 <= m["MnR"]
    assert written["t2v"]["MnR"] <= info["num_videos"]
    assert set(written["itc_only"]) == {"t2v", "v2t"}
    for direction in ("t2v", "v2t"):  # 95 % bootstrap intervals around every recall
        ci = written["ci95"][direction]
        assert all(ci[f"R@{k}_lo"] <= written[direction][f"R@{k}"] <= ci[f"R@{k}_hi"] for k in (1, 5, 10))
    assert not list(out.parent.glob(".*tmp*"))  # atomic write left nothing behind

    runs = search_runs(uri, "rap-eval-test")
    stage = runs[runs["tags.rap.role"] == "stage"].iloc[0]
    assert stage["tags.rap.dataset"] == "msvd" and stage["status"] == "FINISHED"
    assert stage["metrics.t2v_R1"] == pytest.approx(written["t2v"]["R@1"])
    assert stage["metrics.v2t_MnR"] == pytest.approx(written["v2t"]["MnR"])
    assert stage["metrics.itc_only_t2v_R1"] == pytest.approx(written["itc_only"]["t2v"]["R@1"])
    assert stage["params.evaluate.itm_rerank_k"] == "3"
    assert stage["metrics.diagnostics_patch_spread"] == pytest.approx(written["diagnostics"]["patch_spread"])


def test_run_evaluation_rejects_incomplete_checkpoint(msvd_params, tmp_path, monkeypatch):
    monkeypatch.setenv("RAP_TRACKING", "0")
    ckpt = tmp_path / "partial.pt"
    torch.save({"model": {"temp": torch.tensor(0.07)}}, ckpt)
    with pytest.raises(RuntimeError, match="missing from the checkpoint"):
        run_evaluation(msvd_params, "msvd", "test", ckpt, tmp_path / "m.json")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        run_evaluation(msvd_params, "msvd", "test", tmp_path / "nope.pt", tmp_path / "m.json")
    assert not (tmp_path / "m.json").exists()


def test_rerank_projects_each_videos_keys_values_once(monkeypatch):
    """ITM re-ranking with the real (embedded-scale) model: every cross-attention layer
    projects a video's tokens to keys and values once per batch of pairs, however many texts
    the video is paired with (rows through the key/value projections = distinct videos of the
    batch, not pairs), and the scores equal the per-pair computation. On the CPU the pass is
    fp32; on a CUDA GPU it is half precision (bf16 where native, else fp16)."""
    import warnings

    from rap.evaluation import _itm_autocast, itm_pair_scores
    from rap.model.rap import RaPModel

    cfg = load_params(REPO / "params.yaml").cfg
    torch.manual_seed(0)
    model = RaPModel(cfg.model, cfg.pretrain.loss).eval()
    g = torch.Generator().manual_seed(0)
    size = cfg.model.vision.img_size
    n_videos, n_texts = 3, 4
    with torch.inference_mode():
        feats = model.encode_video(torch.randint(0, 256, (n_videos, 2, 3, size, size), generator=g, dtype=torch.uint8))
    texts = ["a red circle moves left", "a blue square", "the green star grows in the corner", "a cube"]
    tok = model.tokenizer(texts, padding="longest", return_tensors="pt")
    tokens = {"input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"]}
    video_idx = torch.tensor([2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1])  # every video with every text
    text_idx = torch.arange(n_texts).repeat_interleave(n_videos)
    rows: dict[str, list[int]] = {"key": [], "value": []}
    dtypes = set()

    def count(name):
        def hook(module, inputs, output):
            rows[name].append(inputs[0].shape[0])
            dtypes.add(output.dtype)

        return hook

    layers = model.text.cross_attn
    hooks = [getattr(layer.self, name).register_forward_hook(count(name)) for layer in layers for name in rows]
    try:
        scores = itm_pair_scores(model, feats, tokens, video_idx, text_idx, batch_size=8, device=torch.device("cpu"))
    finally:
        for h in hooks:
            h.remove()
    # pairs in video order, 8 per batch: videos {0, 1} in the first batch, {2} in the second
    assert rows["key"] == rows["value"] == [2] * len(layers) + [1] * len(layers)
    assert sum(rows["key"]) == n_videos * len(layers) < len(video_idx) * len(layers)
    assert dtypes == {torch.float32}
    with torch.inference_mode():
        per_pair = model.itm_scores(
            feats.index(video_idx), tokens["input_ids"][text_idx], tokens["attention_mask"][text_idx]
        )
    torch.testing.assert_close(scores, per_pair, rtol=1e-5, atol=1e-5)

    assert not _itm_autocast(torch.device("cpu"))._enabled
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available": only the chosen dtype is read
        for native, dtype in ((True, torch.bfloat16), (False, torch.float16)):  # e.g. H100, V100
            # a V100 "supports" bf16 by emulation only (several times slower): fp16 there
            monkeypatch.setattr(
                torch.cuda, "is_bf16_supported", lambda including_emulation=True, n=native: n or including_emulation
            )
            assert _itm_autocast(torch.device("cuda")).fast_dtype == dtype
