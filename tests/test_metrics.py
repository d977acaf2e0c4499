"""Retrieval metrics against hand-computed ranks, tie handling and input validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rap.metrics import retrieval_metrics, retrieval_ranks, t2v_v2t_metrics

# Query i's correct candidate is i (diagonal).
#   q0: 0.9 beats 0.1, 0.2                 -> rank 1
#   q1: 0.5 is beaten by 0.8 and 0.7       -> rank 3
#   q2: 0.4 is beaten by 0.6               -> rank 2
SIM3 = np.array([[0.9, 0.1, 0.2], [0.8, 0.5, 0.7], [0.3, 0.6, 0.4]])


def test_hand_computed_3x3():
    assert retrieval_ranks(SIM3).tolist() == [1, 3, 2]
    m = retrieval_metrics(SIM3)
    assert m == pytest.approx({"R@1": 100 / 3, "R@5": 100.0, "R@10": 100.0, "MdR": 2.0, "MnR": 2.0})
    assert all(isinstance(v, float) for v in m.values())


def test_hand_computed_ranks_1_to_12():
    # Every row scores candidate j as 12 - j, so query i's correct candidate i has exactly
    # i candidates above it: ranks 1, 2, ..., 12.
    n = 12
    sim = np.tile(np.arange(n, 0, -1, dtype=float), (n, 1))
    assert retrieval_ranks(sim).tolist() == list(range(1, n + 1))
    m = retrieval_metrics(torch.tensor(sim))
    assert m == pytest.approx({"R@1": 100 / 12, "R@5": 500 / 12, "R@10": 1000 / 12, "MdR": 6.5, "MnR": 6.5})


def test_constant_matrix_is_not_better_than_chance():
    n = 10
    m = retrieval_metrics(np.ones((n, n)))
    assert m["R@1"] <= 100 / n
    assert m["R@5"] <= 500 / n
    assert m["MdR"] >= (n + 1) / 2
    # Pessimistic policy: every wrong candidate ties with the correct one and goes first.
    assert m == pytest.approx({"R@1": 0.0, "R@5": 0.0, "R@10": 100.0, "MdR": 10.0, "MnR": 10.0})


def test_tie_with_a_wrong_candidate_counts_against_the_query():
    sim = np.array([[0.5, 0.5, 0.1]])
    assert retrieval_ranks(sim, [0]).tolist() == [2]
    assert retrieval_ranks(sim, [1]).tolist() == [2]
    # A tie between two *correct* candidates costs nothing: either one is a hit.
    assert retrieval_ranks(sim, [[0, 1]]).tolist() == [1]
    assert retrieval_ranks(sim, [2]).tolist() == [3]


def test_ties_match_worst_case_sort_reference():
    """Independent reference: sort each row by (score desc, correct last), find the first hit."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        q, c = rng.integers(1, 9, size=2)
        sim = rng.integers(0, 3, size=(q, c)).astype(float)  # few values: many ties
        mask = rng.random((q, c)) < 0.3
        mask[np.arange(q), rng.integers(0, c, size=q)] = True
        expected = []
        for i in range(q):
            order = sorted(range(c), key=lambda j: (-sim[i, j], bool(mask[i, j])))
            expected.append(1 + next(pos for pos, j in enumerate(order) if mask[i, j]))
        assert retrieval_ranks(sim, mask).tolist() == expected


def test_gt_formats_agree():
    sim = np.array([[0.1, 0.9, 0.3, 0.2], [0.7, 0.2, 0.1, 0.8]])  # 2 queries x 4 candidates
    # q0 correct 2 (0.3, beaten by 0.9) -> 2; q1 correct 0 (0.7, beaten by 0.8) -> 2
    idx = [2, 0]
    bool_gt = np.zeros((2, 4), dtype=bool)
    bool_gt[0, 2] = bool_gt[1, 0] = True
    variants = [idx, np.array(idx), torch.tensor(idx), [[2], [0]], bool_gt, torch.from_numpy(bool_gt)]
    for gt in variants:
        assert retrieval_ranks(sim, gt).tolist() == [2, 2], gt
    # several correct candidates: best rank counts (q0: {2, 1} -> 1; q1: {0, 2} -> 2)
    assert retrieval_ranks(sim, [[2, 1], [0, 2]]).tolist() == [1, 2]
    assert retrieval_ranks(sim, [1, [0, 2]]).tolist() == [1, 2]


def test_non_square_and_bf16():
    sim = torch.tensor([[0.2, 0.1, 0.4, 0.3, 0.0]], dtype=torch.bfloat16)
    assert retrieval_ranks(sim, [3]).tolist() == [2]


def test_t2v_v2t_multi_caption():
    # 5 captions of 2 videos (MSVD-style): captions 0-2 -> video 0, captions 3-4 -> video 1.
    sim = np.array(
        [
            [0.9, 0.1],  # t0: video 0 first          -> t2v rank 1
            [0.2, 0.8],  # t1: video 1 beats video 0   -> 2
            [0.6, 0.5],  # t2                          -> 1
            [0.7, 0.3],  # t3: correct video 1 is 2nd  -> 2
            [0.4, 0.35],
        ]
    )  # t4: 0.35 < 0.4             -> 2
    out = t2v_v2t_metrics(sim, [0, 0, 0, 1, 1])
    assert out["t2v"] == pytest.approx({"R@1": 40.0, "R@5": 100.0, "R@10": 100.0, "MdR": 2.0, "MnR": 1.6})
    # v2t: video 0 scores the captions [0.9, 0.2, 0.6, 0.7, 0.4]: its caption t0 is first -> 1.
    # video 1 scores [0.1, 0.8, 0.5, 0.3, 0.35]: its best caption t4 (0.35) is beaten by
    # t1 (0.8) and t2 (0.5) -> 3.
    assert out["v2t"] == pytest.approx({"R@1": 50.0, "R@5": 100.0, "R@10": 100.0, "MdR": 2.0, "MnR": 2.0})


def test_t2v_v2t_separate_v2t_scores():
    sim = np.eye(3)
    sim_v2t = np.array(
        [
            [0.0, 1.0, 0.5],  # video 0: its caption 0 is last -> 3
            [0.0, 1.0, 0.0],  # tie-free: caption 1 first -> 1
            [0.0, 0.0, 1.0],
        ]
    )  # -> 1
    out = t2v_v2t_metrics(torch.tensor(sim), torch.tensor([0, 1, 2]), sim_v2t)
    assert out["t2v"]["R@1"] == pytest.approx(100.0)
    assert out["v2t"]["MnR"] == pytest.approx(5 / 3)


@pytest.mark.parametrize(
    "sim, gt, match",
    [
        (np.zeros(3), None, "2-D"),
        (np.zeros((2, 2, 2)), None, "2-D"),
        (np.zeros((0, 3)), [], "empty"),
        (np.zeros((2, 3)), None, "square"),
        (np.zeros((2, 3)), [0], "2 queries"),
        (np.zeros((2, 3)), [0, 3], "out of range"),
        (np.zeros((2, 3)), [0, -1], "out of range"),
        (np.zeros((2, 3)), np.zeros((3, 3), dtype=bool), "shape"),
        (np.zeros((2, 3)), np.array([[True, False, False], [False, False, False]]), "query 1 has no correct"),
        (np.zeros((2, 3)), np.array([0.0, 1.0]), "dtype"),
        (np.zeros((2, 3)), [[0], []], "query 1 has no correct"),
        (np.zeros((2, 3)), [[0], ["a"]], "gt\\[1\\]"),
        (np.array([[0.1, np.nan], [0.2, 0.3]]), None, "NaN"),
        (np.array([["a", "b"], ["c", "d"]]), None, "numeric"),
    ],
)
def test_bad_inputs_raise_clear_errors(sim, gt, match):
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(sim, gt)


def test_t2v_v2t_bad_inputs():
    with pytest.raises(ValueError, match="video 1 has no text"):
        t2v_v2t_metrics(np.zeros((2, 2)), [0, 0])
    with pytest.raises(ValueError, match="shape \\(3,\\)"):
        t2v_v2t_metrics(np.zeros((3, 2)), [0, 1])
    with pytest.raises(ValueError, match="out of range"):
        t2v_v2t_metrics(np.zeros((2, 2)), [0, 2])
    with pytest.raises(ValueError, match="sim_v2t"):
        t2v_v2t_metrics(np.zeros((2, 2)), [0, 1], np.zeros((2, 3)))


def test_near_equal_float64_scores_do_not_tie():
    """Re-ranked scores are float64 (ITC + ITM + an offset): two that differ by less than a
    float32 ulp must still rank apart (a float32 cast would tie them, pessimistically)."""
    base = 101.25  # an offset-sized score: the float32 ulp here is ~8e-6
    sim = torch.tensor([[base + 1e-9, base, 0.0]], dtype=torch.float64)
    assert torch.tensor(base + 1e-9, dtype=torch.float32) == torch.tensor(base, dtype=torch.float32)
    assert retrieval_ranks(sim, [0]).tolist() == [1]
    assert retrieval_ranks(sim, [1]).tolist() == [2]


def test_bootstrap_intervals_cover_the_value_and_shrink_with_more_queries():
    from rap.metrics import recall_intervals

    rng = np.random.default_rng(0)
    small = rng.integers(1, 21, size=40)  # 40 queries over 20 candidates
    large = np.tile(small, 25)  # the same ranking, 1,000 queries
    ci_small, ci_large = recall_intervals(small), recall_intervals(large)
    for k in (1, 5, 10):
        value = 100.0 * np.mean(small <= k)
        assert ci_small[f"R@{k}_lo"] <= value <= ci_small[f"R@{k}_hi"]
        assert ci_large[f"R@{k}_hi"] - ci_large[f"R@{k}_lo"] < ci_small[f"R@{k}_hi"] - ci_small[f"R@{k}_lo"]
    assert recall_intervals(small) == ci_small  # seeded: reproducible
    # every query at rank 1: no uncertainty left
    assert recall_intervals(np.ones(30, dtype=int))["R@1_lo"] == 100.0


def test_interval_of_a_hand_computed_case():
    """Two queries, one found at rank 1: a resample holds 0, 1 or 2 hits (p = 1/4, 1/2, 1/4), so
    the central 95 % of the resampled R@1 spans 0 to 100."""
    from rap.metrics import recall_intervals

    ci = recall_intervals(np.array([1, 7]))
    assert (ci["R@1_lo"], ci["R@1_hi"]) == (0.0, 100.0)
    assert (ci["R@10_lo"], ci["R@10_hi"]) == (100.0, 100.0)
