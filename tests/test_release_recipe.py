"""``train_recipe: release``: the released code's objective, term by term against loop
transcriptions of RaP/models/rap_pretrain.py:146-178 (caskcsg/VLP), on the embedded model."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from rap.config import ConfigError, LossConfig, load_params
from rap.model import RaPModel

from helpers.config import NO_DROPOUT, PARAMS_YAML

# Equal token lengths, so that no caption has padding: the release weighs its padding tokens
# too (rap does not, DESIGN.md "Table of record"); without padding the two are the same.
CAPTIONS = ["a red circle moves left", "a blue square spins right", "a green star grows fast"]


def release_model(phase: str) -> tuple[RaPModel, LossConfig]:
    p = load_params(PARAMS_YAML, {"train_recipe": "release", **NO_DROPOUT})
    loss = dataclasses.replace(p.cfg.pretrain.loss if phase == "pretrain" else p.cfg.finetune.loss, queue_size=5)
    torch.manual_seed(0)
    return RaPModel(p.cfg.model, loss).train(), loss


def batch_of(model: RaPModel, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tok = model.tokenizer(CAPTIONS, padding="longest", return_tensors="pt")
    assert bool(tok["attention_mask"].all()), "the captions must tokenise to one length"
    shape = (len(CAPTIONS), 2, 3, 64, 64)
    return {
        "video": torch.randint(0, 256, shape, generator=g, dtype=torch.uint8),
        "video_aug": torch.randint(0, 256, shape, generator=g, dtype=torch.uint8),
        "input_ids": tok["input_ids"],
        "attention_mask": tok["attention_mask"],
    }


def soft_ce_loop(anchors, candidates, targets, tau) -> torch.Tensor:
    """-sum_j target_ij log softmax_j(a_i . c_j / tau), mean over i, one row at a time."""
    rows = []
    for i in range(anchors.shape[0]):
        logits = [float(anchors[i] @ c) / tau for c in candidates]
        lse = math.log(sum(math.exp(x) for x in logits))
        rows.append(-sum(targets[i][j] * (logits[j] - lse) for j in range(len(logits))))
    return torch.tensor(sum(rows) / len(rows))


def local_loop(locals_, anchors, partners, tau) -> torch.Tensor:
    """The release's redundancy_weight (rap_pretrain.py:261-289) with its weights
    (rap_pretrain.py:161-165), for locals without padding: sum_m w_im * -log p_im / M."""
    b, m = locals_.shape[:2]
    total = 0.0
    for i in range(b):
        maxes = [float((partners[i] @ locals_[i, k]).max()) / tau for k in range(m)]  # max over partners
        z = sum(math.exp(x) for x in maxes)
        others = torch.cat([locals_[j] for j in range(b) if j != i])  # every local of every other sample
        per = 0.0
        for k in range(m):
            pos = float(anchors[i] @ locals_[i, k]) / tau
            negs = (others @ anchors[i] / tau).tolist()
            log_p = pos - math.log(math.exp(pos) + sum(math.exp(x) for x in negs))
            per += math.exp(maxes[k]) / z * -log_p
        total += per / m
    return torch.tensor(total / b)


@pytest.mark.parametrize("phase", ["pretrain", "finetune"])
def test_release_objective_term_by_term(phase: str):
    model, loss = release_model(phase)
    model(batch_of(model, 0), alpha=0.4, phase=phase)  # fills part of the queue
    batch = batch_of(model, 1)
    ref = copy.deepcopy(model)
    ref.momentum.update(ref)  # what the forward does first
    tau = float(ref.temperature.detach())
    with torch.no_grad():
        v, t = ref.encode_video(batch["video"]), ref.encode_text(batch["input_ids"], batch["attention_mask"])
        m_clip = (
            batch["video_aug"] if phase == "pretrain" else batch["video"]
        )  # rap_pretrain.py:127 / rap_retrieval.py:91
        vm, tm = ref.momentum.features(m_clip, batch["input_ids"], batch["attention_mask"], 0.0)
    filled = int(ref.momentum.filled)
    vq, tq = ref.momentum.video_queue[:filled], ref.momentum.text_queue[:filled]
    b, alpha = len(CAPTIONS), 0.4
    onehot = [[float(i == j) for j in range(b + filled)] for i in range(b)]

    def distilled(anchor_m, cands):
        soft = torch.softmax(anchor_m @ cands.T / tau, dim=1)
        return [[alpha * float(soft[i, j]) + (1 - alpha) * onehot[i][j] for j in range(b + filled)] for i in range(b)]

    t_all, v_all = torch.cat([tm.emb, tq]), torch.cat([vm.emb, vq])
    i2t = soft_ce_loop(v.emb, t_all, distilled(vm.emb, t_all), tau)
    t2i = soft_ce_loop(t.emb, v_all, distilled(tm.emb, v_all), tau)
    i2i = soft_ce_loop(v.emb, v_all, onehot, tau)
    t2t = soft_ce_loop(t.emb, t_all, onehot, tau)
    racl_v2t = local_loop(tm.tokens, v.emb, vm.patches, tau)  # loss_t2i_crosMod_l: video anchor, tokens
    racl_t2v = local_loop(vm.patches, t.emb, tm.tokens, tau)  # loss_i2t_crosMod_l: text anchor, patches

    out = model(batch, alpha=alpha, phase=phase)
    close = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["itc"], (i2t + t2i) / 2, **close)
    torch.testing.assert_close(out["intra_video"], i2i, **close)
    torch.testing.assert_close(out["intra_text"], t2t, **close)
    torch.testing.assert_close(out["racl_v2t"], racl_v2t, **close)
    torch.testing.assert_close(out["racl_t2v"], racl_t2v, **close)
    # loss_ita = (i2t + t2i + i2i + t2t) / 4 + both local terms; then ITM (+ LM in pre-training)
    ita = (i2t + t2i + i2i + t2t) / 4 + racl_v2t + racl_t2v
    rest = out["itm"] + (out["lm"] if phase == "pretrain" else 0.0)
    assert ("lm" in out) == (phase == "pretrain")
    torch.testing.assert_close(out["loss"], ita + rest, **close)
    out["loss"].backward()
    assert model.temp.grad.abs() > 0  # tau learns through the weights and every logit
    assert int(model.momentum.filled) == loss.queue_size  # random unit vectors from the start (the release)


def test_release_recipe_reaches_both_stages_over_the_knobs():
    p = load_params(PARAMS_YAML, {"train_recipe": "release", "racl_variant": "paper"})
    assert p.train_recipe == "release" and p.to_flat_dict()["train_recipe"] == "release"
    for stage, view in ((p.cfg.pretrain.loss, "second"), (p.cfg.finetune.loss, "first")):
        assert stage.momentum and stage.intra_queue and stage.racl_double_normalise
        assert (stage.racl_variant, stage.racl_locals, stage.momentum_video_view) == ("official", "momentum", view)
        assert (stage.itc_weight, stage.intra_video_weight, stage.intra_text_weight) == (0.5, 0.25, 0.25)
    assert p.knobs["racl_variant"] == "official"
    paper = load_params(PARAMS_YAML)
    assert paper.train_recipe == "paper" and not paper.cfg.pretrain.loss.racl_double_normalise
    with pytest.raises(ConfigError, match="train_recipe"):
        load_params(PARAMS_YAML, {"train_recipe": "blip"})


def test_release_parts_need_momentum_and_the_official_variant():
    with pytest.raises(ConfigError, match="racl_locals"):
        LossConfig(racl_locals="momentum")
    with pytest.raises(ConfigError, match="intra_queue"):
        LossConfig(intra_queue=True)
    with pytest.raises(ConfigError, match="racl_double_normalise"):
        LossConfig(racl_double_normalise=True)
