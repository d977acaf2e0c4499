"""MAC masking: random token keep, per-position frame averaging, text masking, and the
masked ViT path of VideoEncoder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from rap.config import load_params
from rap.model.masking import frame_average, mask_text, num_kept, random_masking
from rap.model.video import VideoEncoder

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.fixture(scope="module")
def encoder() -> VideoEncoder:
    torch.manual_seed(0)
    return VideoEncoder(load_params(PARAMS).cfg.model.vision)


def test_random_masking_keeps_requested_count_and_gathers_rows():
    x = torch.randn(3, 64, 5)
    g = torch.Generator().manual_seed(1)
    vis, idx = random_masking(x, 0.75, generator=g)
    assert vis.shape == (3, 16, 5) and idx.shape == (3, 16)
    for row in range(3):
        assert torch.equal(idx[row], idx[row].unique(sorted=True))
        assert torch.equal(vis[row], x[row, idx[row]])
    # Same generator seed -> same mask; rows differ from each other.
    _, idx2 = random_masking(x, 0.75, generator=torch.Generator().manual_seed(1))
    assert torch.equal(idx, idx2)
    assert not torch.equal(idx[0], idx[1])
    assert num_kept(10, 0.75) == 2 and num_kept(3, 0.9) == 1
    with pytest.raises(ValueError, match="mask ratio"):
        random_masking(x, 1.0)


def test_frame_average_ratio_zero_is_plain_mean():
    torch.manual_seed(0)
    b, k, n, w = 2, 4, 16, 8
    tokens = torch.randn(b * k, n, w)
    shuffled, idx = random_masking(tokens, 0.0)  # keeps every position
    avg, visible = frame_average(shuffled, idx, k, n)
    expected = tokens.view(b, k, n, w).mean(1)
    torch.testing.assert_close(avg, expected)
    assert visible.all()
    avg_none, _ = frame_average(tokens, None, k, n)
    torch.testing.assert_close(avg_none, expected)


def test_frame_average_counts_only_visible_frames():
    # 1 clip, 2 frames, 4 positions: frame 0 sees {0, 1}, frame 1 sees {1, 2}, nobody sees 3.
    tokens = torch.tensor([[[1.0], [2.0]], [[4.0], [8.0]]])
    idx = torch.tensor([[0, 1], [1, 2]])
    avg, visible = frame_average(tokens, idx, 2, 4)
    assert avg[0, :, 0].tolist() == pytest.approx([1.0, 3.0, 8.0, 0.0])
    assert visible.tolist() == [[True, True, True, False]]


def test_mask_text_keeps_cls_sep_order_and_padding_structure():
    cls, sep, pad = 2, 3, 0
    ids = torch.tensor(
        [
            [cls, 10, 11, 12, 13, 14, 15, 16, 17, sep, pad, pad],
            [cls, 20, 21, sep, pad, pad, pad, pad, pad, pad, pad, pad],
        ]
    )
    am = (ids != pad).long()
    g = torch.Generator().manual_seed(0)
    new_ids, new_am = mask_text(ids, am, 0.5, sep_id=sep, pad_id=pad, generator=g)
    assert new_ids.shape == ids.shape  # same length on every rank (DDP all-gathers)
    assert new_ids[:, 0].tolist() == [cls, cls]
    for row, n_content in ((0, 8), (1, 2)):
        real = new_ids[row][new_am[row].bool()].tolist()
        assert real[-1] == sep and len(real) == 2 + n_content - n_content // 2
        content = real[1:-1]
        original = ids[row].tolist()
        assert content == sorted(content, key=original.index)  # order preserved
        assert set(content) <= set(original)
        # padding only after the real tokens
        assert new_am[row].tolist() == [1] * len(real) + [0] * (new_ids.shape[1] - len(real))
        assert (new_ids[row][~new_am[row].bool()] == pad).all()
    same_ids, same_am = mask_text(ids, am, 0.0, sep_id=sep)
    assert same_ids is ids and same_am is am


def test_encoder_drops_patches_per_frame_before_the_blocks(encoder: VideoEncoder):
    seen = []
    hook = encoder.vit.blocks[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape))
    video = torch.randn(2, 4, 3, 64, 64)
    n = encoder.num_patches  # 64 at 64 px / patch 8
    try:
        encoder.train()
        hidden, patch_mask = encoder(video, mask_ratio=0.75)
        assert seen[-1] == (8, 1 + n // 4, encoder.width)  # [CLS] + 25 % of the patches
        assert hidden.shape == (2, 1 + n, encoder.width)
        # Independent positions per frame: 4 frames cover far more than one frame's 25 %
        # (expected 1 - 0.75**4 = 68 %; identical masks would give exactly 25 %).
        coverage = patch_mask.float().mean(dim=1)
        assert (coverage > 0.45).all()
        assert (hidden[:, 1:][~patch_mask] == 0).all()
        encoder.eval()
        _, eval_mask = encoder(video, mask_ratio=0.75)  # evaluation ignores masking
        assert seen[-1] == (8, 1 + n, encoder.width) and eval_mask.all()
    finally:
        hook.remove()
        encoder.train()


def test_encoder_ratio_zero_equals_frame_mean_of_timm_features(encoder: VideoEncoder):
    encoder.eval()
    video = torch.randn(2, 3, 3, 64, 64)
    with torch.no_grad():
        hidden, patch_mask = encoder(video, mask_ratio=0.0)
        per_frame = encoder.vit.forward_features(video.flatten(0, 1))  # timm's own path
    torch.testing.assert_close(hidden, per_frame.view(2, 3, *per_frame.shape[1:]).mean(1))
    assert patch_mask.all()
    encoder.train()


def test_encoder_rejects_wrong_frame_size(encoder: VideoEncoder):
    with pytest.raises(ValueError, match="img_size"):
        encoder(torch.randn(1, 2, 3, 32, 32))


def test_grad_checkpointing_same_output():
    torch.manual_seed(0)
    cfg = dataclasses.replace(load_params(PARAMS).cfg.model.vision, depth=2)
    enc = VideoEncoder(cfg).train()
    video = torch.randn(1, 2, 3, 64, 64)
    ref, _ = enc(video)
    enc.set_grad_checkpointing(True)
    out, _ = enc(video)
    out.sum().backward()
    torch.testing.assert_close(out, ref)
    assert enc.vit.patch_embed.proj.weight.grad is not None
