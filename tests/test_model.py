"""RaPModel at the embedded scale (params.yaml): losses, gradients, encoders, weight sharing,
tokenizer. Everything is built from the config, randomly initialised, offline."""

from __future__ import annotations

import dataclasses
import math
import time

import pytest
import torch
from transformers import BertModel

from rap.config import ModelConfig, TextConfig
from rap.model import RaPModel, build_tokenizer

from helpers.model import model_cfgs, random_batch


@pytest.fixture(scope="module")
def model() -> RaPModel:
    model_cfg, loss_cfg = model_cfgs()
    model_cfg = dataclasses.replace(model_cfg, mask_video=0.5, mask_text=0.3)
    torch.manual_seed(0)
    return RaPModel(model_cfg, loss_cfg)


@pytest.mark.parametrize("momentum", [False, True])
def test_forward_backward_every_term(momentum: bool):
    model_cfg, loss_cfg = model_cfgs(momentum=momentum, queue_size=8)
    model_cfg = dataclasses.replace(model_cfg, mask_video=0.75, mask_text=0.3)
    torch.manual_seed(0)
    model = RaPModel(model_cfg, loss_cfg).train()
    batch = random_batch(model)
    start = time.perf_counter()
    out = model(batch, alpha=0.4, phase="pretrain")
    out["loss"].backward()
    assert time.perf_counter() - start < 10
    assert set(out) == {"loss", "itc", "racl_v2t", "racl_t2v", "itm", "lm", "intra_video", "intra_text"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in out.values())
    lam = loss_cfg.racl_lambda
    expected = (
        out["itc"]
        + out["itm"]
        + out["lm"]
        + out["intra_video"]
        + out["intra_text"]
        + lam * (out["racl_v2t"] + out["racl_t2v"])
    )  # eq. (10), unit weights
    torch.testing.assert_close(out["loss"], expected)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    nonfinite = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert nonfinite == []
    assert model.temp.grad.abs() > 0
    if momentum:
        assert not any(p.requires_grad for p in model.momentum.parameters())
        assert int(model.momentum.filled) == 2
        before = model.momentum.vision_proj.weight.clone()
        model(batch, alpha=0.4)
        assert int(model.momentum.filled) == 4
        assert not torch.equal(before, model.momentum.vision_proj.weight)  # EMA moved


def test_switched_off_terms_are_absent_and_not_computed():
    model_cfg, loss_cfg = model_cfgs(
        itm_weight=0.0, lm_weight=0.0, intra_video_weight=0.0, intra_text_weight=0.0, racl="v2t", racl_lambda=2.0
    )
    torch.manual_seed(0)
    model = RaPModel(model_cfg, loss_cfg).train()
    batch = random_batch(model)
    del batch["video_aug"]  # not needed without intra_video
    out = model(batch, phase="finetune")
    assert set(out) == {"loss", "itc", "racl_v2t"}
    torch.testing.assert_close(out["loss"], out["itc"] + 2.0 * out["racl_v2t"])
    out["loss"].backward()
    assert model.itm_head.weight.grad is None and model.text.lm_bias.grad is None


def test_finetune_and_eval_are_never_masked(model: RaPModel):
    seen = []
    hook = model.vision.vit.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    n = model.vision.num_patches
    batch = random_batch(model)
    try:
        model.train()
        model(batch, phase="finetune")
        assert set(seen) == {1 + n}
        seen.clear()
        model(batch, phase="pretrain")
        assert set(seen) == {1 + n // 2}  # mask_video = 0.5
        model.eval()
        seen.clear()
        with torch.no_grad():
            model(batch, phase="pretrain")
        assert set(seen) == {1 + n}
    finally:
        hook.remove()
        model.train()


def test_encode_shapes_and_normalisation(model: RaPModel):
    model.eval()
    batch = random_batch(model, k=3)
    with torch.no_grad():
        v = model.encode_video(batch["video"])
        t = model.encode_text(batch["input_ids"], batch["attention_mask"])
    d, n, L = model.cfg.embed_dim, model.vision.num_patches, batch["input_ids"].shape[1]
    assert v.emb.shape == (2, d) and v.patches.shape == (2, n, d) and v.patch_mask.shape == (2, n)
    assert v.hidden.shape == (2, 1 + n, model.vision.width) and v.hidden_mask.all()
    assert t.emb.shape == (2, d) and t.tokens.shape == (2, L - 1, d) and t.hidden.shape == (2, L, model.text.width)
    for x in (v.emb, v.patches, t.emb, t.tokens):
        torch.testing.assert_close(x.norm(dim=-1), torch.ones(x.shape[:-1]))
    # token_mask: real non-[CLS] tokens ([SEP] included), padding False
    assert torch.equal(t.token_mask, batch["attention_mask"][:, 1:].bool())
    assert t.token_mask[0].sum() == batch["attention_mask"][0].sum() - 1
    top = v.index(torch.tensor([1]))
    assert top.hidden.shape == (1, 1 + n, model.vision.width)
    model.train()


def test_encode_text_masking_only_in_training(model: RaPModel):
    batch = random_batch(model)
    model.train()
    with torch.no_grad():
        t = model.encode_text(batch["input_ids"], batch["attention_mask"], mask_ratio=0.5)
    assert t.token_mask.sum() < batch["attention_mask"][:, 1:].sum()
    model.eval()
    with torch.no_grad():
        t = model.encode_text(batch["input_ids"], batch["attention_mask"], mask_ratio=0.5)
    assert torch.equal(t.token_mask, batch["attention_mask"][:, 1:].bool())
    model.train()


def test_temperature_clamp():
    model_cfg, loss_cfg = model_cfgs()
    model = RaPModel(model_cfg, loss_cfg)
    assert model.temperature.item() == pytest.approx(model_cfg.temp_init)
    with torch.no_grad():
        model.temp.fill_(5.0)
    assert model.temperature.item() == pytest.approx(model_cfg.temp_max)
    model.clamp_temperature()
    assert model.temp.item() == pytest.approx(model_cfg.temp_max)
    with torch.no_grad():
        model.temp.fill_(-1.0)
    model.clamp_temperature()
    assert model.temp.item() == pytest.approx(model_cfg.temp_min)


def test_itm_scores_shape(model: RaPModel):
    model.eval()
    batch = random_batch(model, b=3)
    with torch.no_grad():
        v = model.encode_video(batch["video"])
        s = model.itm_scores(v, batch["input_ids"], batch["attention_mask"])
        s_top = model.itm_scores(v.index(torch.tensor([2, 0])), batch["input_ids"][:2], batch["attention_mask"][:2])
    assert s.shape == (3,) and torch.isfinite(s).all()
    with torch.no_grad():  # pair (video 0, text 1) scored alone gives the same logit
        alone = model.itm_scores(v.index(torch.tensor([0])), batch["input_ids"][1:2], batch["attention_mask"][1:2])
    torch.testing.assert_close(s_top[1], alone[0])
    model.train()


def test_decoder_shares_all_but_self_attention(model: RaPModel):
    text = model.text
    layer = text.bert.encoder.layer[0]
    dec_attn = text.dec_self_attn[0]
    # separate self-attention ...
    assert dec_attn.self.query.weight.data_ptr() != layer.attention.self.query.weight.data_ptr()
    assert dec_attn.output.dense.weight.data_ptr() != layer.attention.output.dense.weight.data_ptr()
    # ... initialised as a copy of the encoder's
    torch.testing.assert_close(dec_attn.self.query.weight, layer.attention.self.query.weight)
    # everything else of the decoder pass is the encoder's own modules: run the decoder and
    # record which parameters it touches.
    touched = _params_used(model, causal=True)
    shared = {n for n in touched if n.startswith("text.bert.") or n.startswith("text.cross_attn.")}
    assert "text.bert.embeddings.word_embeddings.weight" in shared
    assert "text.bert.encoder.layer.0.intermediate.dense.weight" in shared
    assert "text.cross_attn.0.self.key.weight" in shared
    assert not any(".attention." in n for n in shared)  # encoder self-attention unused
    assert "text.dec_self_attn.0.self.query.weight" in touched
    # the LM output layer is tied to the (shared) word embeddings
    assert not any(n.startswith("text.lm") and n.endswith("weight") and "transform" not in n for n in touched)


def _params_used(model: RaPModel, causal: bool) -> set[str]:
    model.zero_grad(set_to_none=True)
    batch = random_batch(model)
    v = model.encode_video(batch["video"])
    h = model.text(
        batch["input_ids"],
        batch["attention_mask"],
        video_hidden=v.hidden.detach(),
        video_mask=v.hidden_mask,
        causal=causal,
    )
    model.text.lm_logits(h).sum().backward()
    used = {n for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return used


def test_unimodal_pass_equals_stock_bert(model: RaPModel):
    """Our layer loop reproduces transformers' BertModel.forward exactly when no video is given."""
    model.eval()
    batch = random_batch(model)
    with torch.no_grad():
        ours = model.text(batch["input_ids"], batch["attention_mask"])
        stock = BertModel.forward(
            model.text.bert, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[real], stock[real])
    model.train()


def test_decoder_is_causal(model: RaPModel):
    model.eval()
    batch = random_batch(model)
    ids = batch["input_ids"].clone()
    with torch.no_grad():
        v = model.encode_video(batch["video"])
        a = model.text(ids, batch["attention_mask"], video_hidden=v.hidden, video_mask=v.hidden_mask, causal=True)
        ids[:, 5:] = 7
        b = model.text(ids, batch["attention_mask"], video_hidden=v.hidden, video_mask=v.hidden_mask, causal=True)
        enc_a = model.text(batch["input_ids"], batch["attention_mask"], video_hidden=v.hidden)
        enc_b = model.text(ids, batch["attention_mask"], video_hidden=v.hidden)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])
    assert not torch.allclose(enc_a[:, :5], enc_b[:, :5])  # the ITM encoder is bidirectional
    model.train()


def test_no_weight_decay_names(model: RaPModel):
    names = model.no_weight_decay_names()
    for n in (
        "temp",
        "vision.vit.pos_embed",
        "vision.vit.cls_token",
        "vision.vit.norm.weight",
        "vision_proj.bias",
        "text.bert.embeddings.position_embeddings.weight",
        "text.bert.embeddings.LayerNorm.weight",
    ):
        assert n in names
    for n in (
        "vision_proj.weight",
        "text.bert.encoder.layer.0.attention.self.query.weight",
        "text.bert.embeddings.word_embeddings.weight",
    ):
        assert n not in names


def test_builtin_tokenizer_offline_round_trip(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = build_tokenizer(TextConfig(name="tiny", pretrained=False, tokenizer="builtin"))
    text = "A Red circle moves left, then the purple zigzag appears in the top-left corner."
    enc = tok(text)
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and "[UNK]" not in tokens
    assert {"red", "circle", "moves", "purple", "corner"} <= set(tokens)
    assert (
        tok.decode(enc["input_ids"], skip_special_tokens=True)
        == "a red circle moves left, then the purple zigzag appears in the top - left corner."
    )
    batch = tok([text * 5, "hi"], padding="max_length", truncation=True, max_length=12, return_tensors="pt")
    assert batch["input_ids"].shape == (2, 12)
    assert batch["input_ids"][0, -1] == tok.sep_token_id and batch["attention_mask"][1].sum() == 4
    assert tok.convert_tokens_to_ids(["[ENC]", "[DEC]"]) != [tok.unk_token_id] * 2
    # deterministic ids: two builds agree
    assert build_tokenizer(TextConfig(tokenizer="builtin")).get_vocab() == tok.get_vocab()


def test_bad_config_values_raise_clear_errors():
    model_cfg, loss_cfg = model_cfgs()
    bad = dataclasses.replace(
        model_cfg, vision=dataclasses.replace(model_cfg.vision, timm_name="vit_medium_patch16_reg1_gap_256")
    )
    with pytest.raises(ValueError, match="timm_name.*register"):
        RaPModel(bad, loss_cfg)
    unknown = dataclasses.replace(model_cfg, vision=dataclasses.replace(model_cfg.vision, timm_name="no_such_vit"))
    with pytest.raises(ValueError, match="timm_name.*no_such_vit"):
        RaPModel(unknown, loss_cfg)
    tiny_pretrained = dataclasses.replace(model_cfg, text=dataclasses.replace(model_cfg.text, pretrained=True))
    with pytest.raises(ValueError, match="tiny"):
        RaPModel(tiny_pretrained, loss_cfg)
    assert math.isfinite(ModelConfig().temp_init)


def _dropout_ps(module: torch.nn.Module) -> set[float]:
    """Probabilities of the dropout modules a forward pass runs (timm's unused head_drop aside)."""
    return {m.p for n, m in module.named_modules() if isinstance(m, torch.nn.Dropout) and n != "vit.head_drop"}


def test_dropout_is_a_setting_of_each_tower():
    model_cfg, loss_cfg = model_cfgs(momentum=True)  # the momentum copies follow the online towers
    default = RaPModel(model_cfg, loss_cfg)
    assert (model_cfg.vision.dropout, model_cfg.text.dropout) == (None, None)
    assert _dropout_ps(default.vision) == {0.0} and _dropout_ps(default.text) == {0.1}  # timm's / BertConfig's own
    cfg = dataclasses.replace(
        model_cfg,
        vision=dataclasses.replace(model_cfg.vision, dropout=0.2),
        text=dataclasses.replace(model_cfg.text, dropout=0.0),
    )
    model = RaPModel(cfg, loss_cfg)
    assert _dropout_ps(model.vision) == _dropout_ps(model.momentum.vision) == {0.2}
    assert _dropout_ps(model.text) == _dropout_ps(model.momentum.text) == {0.0}
    assert model.text.bert.config.attention_probs_dropout_prob == 0.0  # what cross-attention reads too
    with pytest.raises(ValueError, match="model.text.dropout"):
        dataclasses.replace(model_cfg.text, dropout=1.0)


def test_momentum_itc_masks_empty_queue_slots_like_slicing():
    """The sync-free distilled ITC (whole queue, empty slots masked) equals the loss on the
    filled part of the queue only (ALBEF eq. 6 against [batch; queue])."""
    import torch.nn.functional as F

    model_cfg, loss_cfg = model_cfgs(momentum=True, queue_size=8)
    torch.manual_seed(0)
    model = RaPModel(model_cfg, loss_cfg)
    mom = model.momentum
    g = torch.Generator().manual_seed(3)
    unit = lambda n: F.normalize(torch.randn(n, model_cfg.embed_dim, generator=g), dim=-1)  # noqa: E731
    ids_q = torch.tensor([7, 8, 9])
    mom.enqueue(unit(3), unit(3), ids_q, gather=False)
    v, t, v_m, t_m = unit(2), unit(2), unit(2), unit(2)
    ids = torch.tensor([7, 1])
    tau, alpha = torch.tensor(0.07), 0.4
    got = mom.distilled_itc(v, t, v_m, t_m, tau, alpha, ids)
    text_all, video_all = torch.cat([t_m, mom.text_queue[:3]]), torch.cat([v_m, mom.video_queue[:3]])
    pos = (ids[:, None] == torch.cat([ids, ids_q])[None, :]).float()
    target = pos / pos.sum(1, keepdim=True)
    want = []
    for a, a_m, others in ((v, v_m, text_all), (t, t_m, video_all)):
        soft = alpha * F.softmax(a_m @ others.T / tau, dim=1) + (1 - alpha) * target
        want.append(-(F.log_softmax(a @ others.T / tau, dim=1) * soft).sum(1).mean())
    torch.testing.assert_close(torch.stack(got), torch.stack(want))


def test_itm_loss_is_the_mean_over_pairs_with_a_negative():
    """ITM keeps 3B pairs (no data-dependent sizes); pairs without a negative (every sample of
    one video) weigh 0: with one video only, the loss is the positives' loss alone."""
    model_cfg, loss_cfg = model_cfgs()
    torch.manual_seed(0)
    model = RaPModel(model_cfg, loss_cfg).eval()
    batch = random_batch(model, b=3)
    v = model.encode_video(batch["video"])
    t = model.encode_text(batch["input_ids"], batch["attention_mask"])
    same_video = torch.zeros(3, dtype=torch.long)
    loss = model._itm_loss(v, t, batch["input_ids"], batch["attention_mask"], same_video)
    logits = model._itm_logits(v.hidden, v.hidden_mask, batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, torch.ones(3, dtype=torch.long)))


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"lm_weight": 0.0},
        {"itm_weight": 0.0, "lm_weight": 0.0},
        {"itc_weight": 0.0, "racl": "none", "intra_video_weight": 0.0, "intra_text_weight": 0.0},
    ],
)
def test_unused_parameter_names_are_exactly_those_without_gradient(changes):
    """What the trainer needs to decide DDP's find_unused_parameters: predicted from the loss
    config, checked against a real backward pass."""
    model_cfg, loss_cfg = model_cfgs(**changes)
    torch.manual_seed(0)
    model = RaPModel(model_cfg, loss_cfg).train()
    model(random_batch(model))["loss"].backward()
    no_grad = {n for n, p in model.named_parameters() if p.requires_grad and p.grad is None}
    assert model.unused_parameter_names() == no_grad
    assert bool(no_grad) == bool(changes)


def test_itm_scores_with_per_video_keys_values_equal_per_pair(model: RaPModel):
    """Re-ranking computes each video's cross-attention keys/values once (``video_rows``); the
    scores equal the per-pair computation, and the injected cross-attention equals stock
    BertAttention on the video tokens."""
    model.eval()
    batch = random_batch(model, b=3, seed=5)
    with torch.no_grad():
        v = model.encode_video(batch["video"])
        rows = torch.tensor([2, 0, 2, 1, 2, 0])  # video 2 paired with three texts
        texts = torch.tensor([0, 1, 2, 0, 1, 2])
        ids, mask = batch["input_ids"][texts], batch["attention_mask"][texts]
        per_pair = model.itm_scores(v.index(rows), ids, mask)
        cached = model.itm_scores(v, ids, mask, video_rows=rows)
        torch.testing.assert_close(cached, per_pair, rtol=1e-5, atol=1e-5)
        h = torch.randn(3, 5, model.text.width)
        cross_mask = model.text._mask(v.hidden_mask[:, None, None, :].expand(3, 1, 5, -1), h.dtype)
        stock = model.text.cross_attn[0](h, None, v.hidden, cross_mask)[0]
        ours = model.text._cross_attend(0, h, model.text._layer_kv(0, v.hidden), cross_mask)
        torch.testing.assert_close(ours, stock, rtol=0, atol=0)
    model.train()


def test_second_view_through_the_momentum_video_encoder():
    """intra_video_view: momentum encodes video_aug with an EMA copy of the video tower only
    (no text tower, no queue, no gradient), updated every training step; the loss trains."""
    model_cfg, loss_cfg = model_cfgs(intra_video_view="momentum")
    torch.manual_seed(0)
    model = RaPModel(model_cfg, loss_cfg).train()
    assert model.momentum is not None and not hasattr(model.momentum, "text")
    out = model(random_batch(model))
    before = next(model.momentum.vision.parameters()).clone()
    out["loss"].backward()
    assert torch.isfinite(out["intra_video"]) and "intra_video" in out
    assert all(p.grad is None for p in model.momentum.parameters())
    assert model.unused_parameter_names() == set()  # DDP can run without find_unused_parameters
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("momentum."):
                p.add_(0.1)
    model(random_batch(model))  # the EMA step pulls the copy towards the moved online weights
    torch.testing.assert_close(next(model.momentum.vision.parameters()), before + 0.1 * (1 - loss_cfg.momentum_m))


def test_uint8_frames_are_normalised_by_the_model(model: RaPModel):
    """The loaders ship uint8 pixels; the model (video encoder, both views, the momentum copy)
    normalises them itself: a uint8 batch gives the same loss as its normalised float batch."""
    from rap.model.video import normalize_frames

    model_cfg, loss_cfg = model_cfgs(momentum=True, queue_size=8, intra_video_view="momentum")
    g = torch.Generator().manual_seed(3)
    pixels = {
        k: torch.randint(0, 256, (2, 4, 3, 64, 64), generator=g, dtype=torch.uint8) for k in ("video", "video_aug")
    }
    losses = []
    for normalised in (False, True):
        torch.manual_seed(0)
        net = RaPModel(model_cfg, loss_cfg).train()
        batch = random_batch(net) | ({k: normalize_frames(v) for k, v in pixels.items()} if normalised else pixels)
        torch.manual_seed(1)
        losses.append(net(batch, alpha=0.4)["loss"])
    assert torch.equal(losses[0], losses[1])
    model.eval()
    with torch.no_grad():
        v8, vf = model.encode_video(pixels["video"]), model.encode_video(normalize_frames(pixels["video"]))
    model.train()
    assert torch.equal(v8.emb, vf.emb) and torch.equal(v8.hidden, vf.hidden)
    with pytest.raises(ValueError, match=r"\(B, K, 3, H, W\)"):
        model.encode_video(pixels["video"][:, :, :2])
