"""Frame sampling modes and frame transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rap.data import transforms
from rap.data.sampling import sample_indices
from rap.model.video import IMAGENET_MEAN, IMAGENET_STD, normalize_frames


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


def _former_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """The loader's float path before frames shipped as uint8: uint8 (K, H, W, 3) ->
    ImageNet-normalised float32 (K, 3, H, W) on the CPU, one fused multiply per channel."""
    mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
    out = np.empty((frames.shape[0], 3, *frames.shape[1:3]), np.float32)
    for c in range(3):
        np.multiply(frames[..., c], np.float32(1.0 / (255.0 * std[c])), out=out[:, c], casting="unsafe")
        out[:, c] -= mean[c] / std[c]
    return torch.from_numpy(out)


def test_train_view_same_crop_for_all_frames_uint8():
    frames = np.zeros((4, 48, 80, 3), np.uint8)
    frames[:, :, :40] = 255  # left half white in every frame
    v = transforms.train_view(frames, 32, np.random.default_rng(0))
    assert v.shape == (4, 3, 32, 32) and v.dtype == torch.uint8 and v.is_contiguous()
    assert all(torch.equal(v[0], v[k]) for k in range(4))  # one crop for the view
    assert int(v.max()) == 255 and int(v.min()) == 0
    flipped = transforms.train_view(frames, 32, np.random.default_rng(0), flip=True)
    assert torch.equal(flipped, v.flip(-1))


def test_eval_view_centre_crop():
    frames = np.zeros((2, 40, 120, 3), np.uint8)
    frames[:, :, 40:80] = 255  # the centre square is white
    v = transforms.eval_view(frames, 20)
    assert v.shape == (2, 3, 20, 20) and v.dtype == torch.uint8
    assert bool((v[:, :, :, 2:-2] == 255).all())


def test_device_normalisation_equals_the_former_float_path():
    """normalize_frames (in the model, on the device) on the loader's uint8 output equals the
    float32 normalisation the loader used to do on the same frames (to 1e-6), also with a
    flip and after the uint8 crop/resize; white normalises to (1 - mean) / std."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, 24, 40, 3), dtype=np.uint8)
    for flip in (False, True):
        ref = _former_to_tensor(frames[:, :, ::-1] if flip else frames)
        ours = normalize_frames(transforms.to_tensor(frames, flip))
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    resized = transforms.train_view(frames, 16, np.random.default_rng(1))
    ref = _former_to_tensor(np.ascontiguousarray(resized.permute(0, 2, 3, 1).numpy()))
    torch.testing.assert_close(normalize_frames(resized[None])[0], ref, rtol=0, atol=1e-6)
    white = normalize_frames(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)).flatten()
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(white, expected, rtol=0, atol=1e-6)
    with pytest.raises(TypeError, match="uint8"):
        normalize_frames(torch.zeros(1, 3, 2, 2))


def test_swap_left_right():
    assert (
        transforms.swap_left_right("Left hand moves to the right, leftwards")
        == "Right hand moves to the left, rightwards"
    )
    assert transforms.swap_left_right("a bright light") == "a bright light"
