"""Frame sampling modes and frame transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rap.data import transforms
from rap.data.sampling import sample_indices


def test_uniform_is_segment_centres():
    assert sample_indices(80, 8, "uniform") == [5, 15, 25, 35, 45, 55, 65, 75]
    assert sample_indices(10, 1, "uniform") == [5]


def test_rand_one_frame_per_segment():
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = sample_indices(40, 4, "rand", rng)
        assert [i // 10 for i in idx] == [0, 1, 2, 3]
    draws = {tuple(sample_indices(40, 4, "rand", rng)) for _ in range(20)}
    assert len(draws) > 10  # actually random


def test_headtail_half_from_each_half():
    rng = np.random.default_rng(1)
    for _ in range(50):
        idx = sample_indices(30, 4, "headtail", rng)
        assert all(i < 15 for i in idx[:2]) and all(i >= 15 for i in idx[2:])
        assert idx[0] < idx[1] and idx[2] < idx[3]  # without replacement, sorted
    assert len(sample_indices(30, 5, "headtail", rng)) == 5


@pytest.mark.parametrize("mode", ["rand", "uniform", "headtail"])
@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_short_clips_repeat_frames_spread_over_the_clip(mode, n):
    rng = np.random.default_rng(2)
    idx = sample_indices(n, 8, mode, rng)
    assert len(idx) == 8 and all(0 <= i < n for i in idx)
    assert idx == sorted(idx)
    assert set(idx) == set(range(n))  # every frame used, never all index 0
    if n == 2 and mode == "uniform":
        assert idx == [0, 0, 0, 0, 1, 1, 1, 1]


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_frames"):
        sample_indices(0, 4, "uniform")
    with pytest.raises(ValueError, match="unknown mode"):
        sample_indices(10, 4, "middle", np.random.default_rng(0))
    with pytest.raises(ValueError, match="needs an rng"):
        sample_indices(10, 4, "rand")


def test_train_view_same_crop_for_all_frames_and_normalised():
    frames = np.zeros((4, 48, 80, 3), np.uint8)
    frames[:, :, :40] = 255  # left half white in every frame
    v = transforms.train_view(frames, 32, np.random.default_rng(0))
    assert v.shape == (4, 3, 32, 32) and v.dtype == torch.float32
    assert all(np.allclose(v[0].numpy(), v[k].numpy()) for k in range(4))  # one crop for the view
    white = (1 - transforms.IMAGENET_MEAN) / transforms.IMAGENET_STD
    assert v.max().item() == pytest.approx(float(white.max()), abs=1e-4)
    flipped = transforms.train_view(frames, 32, np.random.default_rng(0), flip=True)
    assert np.allclose(flipped.numpy(), v.numpy()[..., ::-1])


def test_eval_view_centre_crop():
    frames = np.zeros((2, 40, 120, 3), np.uint8)
    frames[:, :, 40:80] = 255  # the centre square is white
    v = transforms.eval_view(frames, 20)
    assert v.shape == (2, 3, 20, 20)
    assert np.allclose(
        v[:, :, :, 2:-2].numpy(),
        ((1 - transforms.IMAGENET_MEAN) / transforms.IMAGENET_STD)[None, :, None, None],
        atol=1e-3,
    )


def test_swap_left_right():
    assert (
        transforms.swap_left_right("Left hand moves to the right, leftwards")
        == "Right hand moves to the left, rightwards"
    )
    assert transforms.swap_left_right("a bright light") == "a bright light"
