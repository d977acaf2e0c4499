"""The authors' released checkpoints in rap, proven against the release's own code.

tests/fixtures/release/ was written by tools/release_fixture/build.sh (by hand): the release's
own Rap_pretrain / Rap_retrieval classes at a small configuration with perturbed random
weights, their outputs and the final text-to-video matrix of the release's own evaluation()
(PROVENANCE.md). Here rap converts those state dicts (rap.release.importer) and must
reproduce every output to 1e-5 with ``evaluate.recipe: release``.
"""

from __future__ import annotations

import json

import pytest
import torch

from rap.config import CLIP_MEAN, CLIP_STD, load_params
from rap.model.rap import RaPModel
from rap.release import importer, recipe

from helpers.config import PARAMS_YAML
from helpers.release import CONFIG, FIXTURE, imported_model

ATOL = 1e-5


@pytest.fixture(scope="module")
def outputs() -> dict:
    return torch.load(FIXTURE / "outputs.pt", weights_only=True)


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    return torch.load(FIXTURE / "inputs.pt", weights_only=True)["frames"]


@pytest.fixture(scope="module", params=["pretrain", "retrieval"])
def imported(request, tmp_path_factory) -> tuple[str, RaPModel, dict]:
    """(layout, rap model holding the converted release weights, the checkpoint's params)."""
    layout = request.param
    model, params, missing = imported_model(layout, tmp_path_factory.mktemp(f"import-{layout}"))
    allowed_missing = set(importer.QUEUE_STATE)
    if layout == "retrieval":  # no LM decoder in a fine-tuned file
        allowed_missing |= {k for k in model.state_dict() if k.startswith(("text.dec_self_attn.", "text.lm_"))}
    assert set(missing) <= allowed_missing, sorted(set(missing) - allowed_missing)[:5]
    return layout, model, params


def test_import_records_clip_pixels_and_provenance(imported) -> None:
    layout, model, params = imported
    assert params["model.vision.pixel_mean"] == CLIP_MEAN
    assert params["model.vision.pixel_std"] == CLIP_STD
    assert model.vision.pixel_mean == CLIP_MEAN and model.vision.pixel_std == CLIP_STD
    assert params["release.layout"] == layout
    assert len(params["release.sha256"]) == 64


def test_itc_itm_lm_equal_the_release(imported, outputs, frames) -> None:
    """ITC similarities, ITM logits (frame-averaged and concatenated tokens) and LM logits of
    the converted model equal the release model's (its [DEC]/[ENC] ids, no token types, CLIP
    pixels)."""
    layout, model, _ = imported
    ref = outputs[layout]
    ids, mask = ref["input_ids"], ref["attention_mask"]
    with torch.inference_mode():
        text = model.encode_text(ids, mask)
        video = model.encode_video(frames)
        torch.testing.assert_close(text.emb @ video.emb.t(), ref["itc"], rtol=0, atol=ATOL)
        emb, concatenated = recipe.release_video_features(model, frames)
        torch.testing.assert_close(recipe.release_video_features(model, frames)[0], video.emb, rtol=0, atol=ATOL)
        t, v = ids.shape[0], frames.shape[0]
        rows = torch.arange(v).repeat(t)  # pair p = (video p % V, text p // V)
        pair_ids, pair_mask = ids.repeat_interleave(v, 0), mask.repeat_interleave(v, 0)
        averaged = model.itm_logits(video, pair_ids, pair_mask, video_rows=rows)
        torch.testing.assert_close(averaged.view(t, v, 2), ref["itm_averaged"], rtol=0, atol=ATOL)
        feats = type(video)(
            video.emb,
            video.patches,
            video.patch_mask,
            concatenated,
            torch.ones(concatenated.shape[:2], dtype=torch.bool),
        )
        cat = model.itm_logits(feats, pair_ids, pair_mask, video_rows=rows)
        torch.testing.assert_close(cat.view(t, v, 2), ref["itm_concatenated"], rtol=0, atol=ATOL)
        if layout == "pretrain":
            from rap.model.text import with_prompt

            n = min(t, v)
            h = model.text(
                with_prompt(ids[:n], model.special.dec), mask[:n], video_hidden=video.hidden[:n], causal=True
            )
            release_lm = ref["lm_logits"].clone()
            release_lm[..., [-2, -1]] = release_lm[..., [-1, -2]]  # vocabulary entries of [DEC]/[ENC] in rap's ids
            torch.testing.assert_close(model.text.lm_logits(h), release_lm, rtol=0, atol=ATOL)


def test_release_recipe_score_matrix_equals_the_release(imported, outputs, frames) -> None:
    """The final t2v matrix of the release's own evaluation() (top k re-ranked by ITM match
    logit + cosine on concatenated frame tokens, -100 elsewhere), from rap's recipe."""
    layout, model, _ = imported
    ref = outputs[layout]
    k = CONFIG["k_test"]
    tokens = {"input_ids": ref["input_ids"], "attention_mask": ref["attention_mask"]}
    itc, t2v = recipe.release_t2v(model, [frames[:4], frames[4:]], tokens, k, "cpu", batch_size=4)
    torch.testing.assert_close(itc, ref["itc"], rtol=0, atol=ATOL)
    assert ((t2v == recipe.OUTSIDE_TOP_K) == (ref["t2v_final"] == recipe.OUTSIDE_TOP_K)).all()
    torch.testing.assert_close(t2v, ref["t2v_final"].float(), rtol=0, atol=ATOL)


def test_release_captions_and_frame_indices() -> None:
    """pre_caption and the evaluation frame indices equal the release's (recorded by the builder)."""
    captions = json.loads((FIXTURE / "captions.json").read_text())
    assert [recipe.pre_caption(c) for c in captions["raw"]] == captions["pre_caption"]
    for vlen, indices in captions["frame_indices"].items():
        assert recipe.release_frame_indices(int(vlen), 8) == indices, vlen


@pytest.fixture(scope="module")
def paper_scale_rap(tmp_path_factory) -> tuple[dict[str, tuple[int, ...]], object]:
    """Every state-dict key of rap's paper-scale model (momentum on) and its shape, built on the
    meta device (no memory, no weights) with a stand-in for bert-base-uncased's vocabulary:
    30,522 entries with [PAD]/[UNK]/[CLS]/[SEP]/[MASK] at BERT's ids, so rap adds [ENC] = 30522
    and [DEC] = 30523 exactly as to the real one."""
    tmp_path = tmp_path_factory.mktemp("bert-vocab")
    words = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += [f"w{i}" for i in range(30522 - len(words))]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "BertTokenizer", "do_lower_case": true}')
    overrides = {
        "scale": "paper",
        "model.vision.pretrained": False,
        "model.text.pretrained": False,
        "model.text.name": "tiny",  # bert-base-uncased's sizes are TextConfig's defaults
        "model.text.tokenizer": str(tmp_path),
        "pretrain.loss.momentum": True,
    }
    params = load_params(PARAMS_YAML, overrides)
    with torch.device("meta"):
        model = RaPModel(params.cfg.model, params.cfg.pretrain.loss)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}, model.special


@pytest.mark.parametrize(("name", "count"), [("rap_pretrain", 1272), ("rap_retrieval", 949)])
def test_converter_covers_every_key_at_paper_scale(name: str, count: int, paper_scale_rap) -> None:
    """Every key of the full-size release models (their key lists, written by the builder) is
    mapped to a rap key of the same shape, tied to the twin the release ties it to, or
    dropped with a reason; and every weight of rap's model gets a value."""
    rows = [line.split("\t") for line in (FIXTURE / f"keys_{name}.tsv").read_text().splitlines()[1:]]
    assert len(rows) == count
    rap_shapes, special = paper_scale_rap
    assert (special.enc, special.dec) == (30522, 30523)  # the release: [DEC] 30522, [ENC] 30523
    shapes = {key: () if shape == "scalar" else tuple(int(s) for s in shape.split("x")) for key, shape, _ in rows}
    filled = set()
    for key, _, tied_to in rows:
        fate, target = importer.classify(key)
        if tied_to:
            assert (fate, target) == ("tied", tied_to), key
        elif fate == "mapped":
            assert target in rap_shapes, (key, target)
            assert rap_shapes[target] == shapes[key], (key, target, rap_shapes[target], shapes[key])
            filled.add(target)
        else:
            assert fate == "dropped" and target, key
    filled |= {"text.bert.embeddings.token_type_embeddings.weight"}  # zeros (no token types in the release)
    if "text.bert.embeddings.word_embeddings.weight" in filled and "momentum.text_proj.weight" in filled:
        filled |= {"momentum.text.bert.embeddings.token_type_embeddings.weight"}
    queue = {"momentum.video_queue", "momentum.text_queue", "momentum.id_queue", "momentum.ptr", "momentum.filled"}
    decoder = ("text.dec_self_attn.", "text.lm_")
    unfilled = {
        k
        for k in rap_shapes
        if k not in filled and k not in queue and not (name == "rap_retrieval" and k.startswith(decoder))
    }
    assert not unfilled, sorted(unfilled)[:10]


def test_cli_import_release(tmp_path, capsys) -> None:
    """``rap import-release FILE --out DIR`` writes the checkpoint and its key report; a file
    that is not a weights-only checkpoint stops with a message naming it."""
    from rap.cli import main

    assert main(["import-release", str(FIXTURE / "release_retrieval.pth"), "--out", str(tmp_path / "ret")]) == 0
    report = json.loads((tmp_path / "ret" / "import.json").read_text())
    assert report["layout"] == "retrieval" and report["counts"]["tied"] == 0
    ckpt = torch.load(tmp_path / "ret" / "checkpoint.pt", weights_only=True)
    assert ckpt["params"]["scale"] == "paper" and ckpt["params"]["release.layout"] == "retrieval"
    bad = tmp_path / "not-a-checkpoint.pth"
    bad.write_bytes(b"\x80\x02K\x01.")  # a pickle of the int 1
    assert main(["import-release", str(bad), "--out", str(tmp_path / "bad")]) == 1
    assert "not-a-checkpoint.pth" in capsys.readouterr().err


def test_imported_checkpoint_evaluates_with_both_recipes_and_finetunes(make_params, tmp_path, single_thread) -> None:
    """The real commands on the embedded corpus: ``rap evaluate`` of an imported release file
    with ``recipe: release`` (its inputs: native frames at its indices, squashed, pre_caption;
    t2v only) and with ``recipe: rap``; ``rap finetune`` starting from it (its queue starts
    empty; the fine-tuned checkpoint keeps the CLIP pixel statistics)."""
    from rap.data.datasets import build_eval_set
    from rap.evaluation import run_evaluation, run_info_path
    from rap.release.data import build_release_eval_set
    from rap.training import finetune

    from helpers.release import fixture_overrides

    overrides = {**fixture_overrides(), "data.image_size": CONFIG["small"]["image_size"]}
    params = make_params(overrides)
    ckpt = importer.import_release(FIXTURE / "release_pretrain.pth", tmp_path / "imported", params.to_flat_dict())

    release_set = build_release_eval_set("msrvtt", "test", params.cfg)
    rap_set = build_eval_set("msrvtt", "test", params.cfg)
    assert release_set.texts == [recipe.pre_caption(t) for t in rap_set.texts]
    assert release_set.videos.read(0).shape == (8, 3, CONFIG["small"]["image_size"], CONFIG["small"]["image_size"])
    assert not torch.equal(release_set.videos.read(0), rap_set.videos.read(0))  # native frames, squashed

    released = run_evaluation(params, "msrvtt", "test", ckpt, tmp_path / "release.json")
    assert set(released) == {"t2v", "ci95", "itc_only"} and set(released["ci95"]) == {"t2v"}
    assert 0 <= released["t2v"]["R@1"] <= 100
    assert json.loads(run_info_path(tmp_path / "release.json").read_text())["recipe"] == "release"
    ours = run_evaluation(
        make_params({**overrides, "evaluate.recipe": "rap"}), "msrvtt", "test", ckpt, tmp_path / "rap.json"
    )
    assert {"t2v", "v2t"} <= set(ours)

    out = finetune.run(
        make_params({**overrides, "evaluate.recipe": "rap"}), "msrvtt-7k", ckpt, tmp_path / "ft", max_steps=1
    )
    tuned = torch.load(out, weights_only=False, map_location="cpu")
    assert tuned["params"]["model.vision.pixel_mean"] == CLIP_MEAN
