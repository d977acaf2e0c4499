"""Writes tests/fixtures/release/ with the authors' released RaP code (see build.sh; run by hand).

Runs inside the release's own environment (transformers 4.15.0, timm 0.4.12, fairscale 0.4.4),
never under rap's: nothing here imports rap. What it writes:

- ``vocab.txt`` + ``tokenizer_config.json``: a small BERT WordPiece vocabulary; the release's
  tokenizer adds ``[DEC]`` then ``[ENC]`` to it (its ``init_tokenizer``), so the two task
  tokens sit in the last two rows exactly as with bert-base-uncased (30522, 30523).
- ``release_pretrain.pth`` / ``release_retrieval.pth``: state dicts of the release's
  ``Rap_pretrain`` and ``Rap_retrieval`` at a small configuration (``config.json``), random
  initialisation plus a seeded perturbation of every parameter (so LayerNorms, biases and
  tied copies all carry non-trivial values), saved in the release's checkpoint format
  ``{'model', 'optimizer', 'config', 'epoch'}``.
- ``inputs.pt``: uint8 frames (V, 8, 3, H, W) and the token ids used; ``captions.json``.
- ``outputs.pt``: per checkpoint, the release's ITC similarities (its evaluation's way: the
  per-frame [CLS] projected then averaged), ITM logits on frame-averaged tokens (training) and
  on concatenated frame tokens (evaluation), LM logits (pre-training only), and the final
  text-to-video score matrix of the release's own ``evaluation()`` (retrieval.py, taken from
  the source file and run unchanged). ``frame_indices``: the release's evaluation sampling.
- ``keys_rap_pretrain.tsv`` / ``keys_rap_retrieval.tsv``: every state-dict key of the
  full-size models (built on the meta device), its shape and the key it is tied to.
- ``PROVENANCE.md``.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import hashlib
import json
import os
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

SEED = 20260312
FRAMES = 8  # the release's num_frm_test
K_TEST = 3  # top k re-ranked (the release: 128); smaller than the 6 clips, so the -100 fill shows
PERTURB = 0.2  # std of the noise added to every parameter
MAX_LEN = 20  # the release's --max_len (64); the fixture's captions are short
SMALL = {
    "image_size": 32,
    "patch_size": 8,
    "vision_width": 32,
    "vision_depth": 2,
    "vision_heads": 2,
    "hidden_size": 32,
    "num_layers": 2,
    "num_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 512,
    "embed_dim": 16,
    "queue_size": 12,
}
FULL = {
    "image_size": 256,
    "patch_size": 16,
    "vision_width": 768,
    "vision_depth": 12,
    "vision_heads": 12,
    "hidden_size": 768,
    "num_layers": 12,
    "num_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
    "embed_dim": 256,
    "queue_size": 57600,
}
WORDS = """a an the man woman person dog cat car ball red blue green yellow small big is are
walks runs plays sings talks drives jumps on in at with of and to from into street park room
kitchen stage field road water guitar song game soccer video clip shows people two three
cooking dancing running playing singing talking driving jumping black white young old""".split()
CAPTIONS = [
    "A man plays the guitar on a stage.",
    "Two dogs run in the park!",
    "a woman (young) is cooking in the kitchen",
    "People dancing; a red car drives on the road.",
    "A cat jumps into the water...",
    "Three people play soccer on a green field",
]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--release-src", required=True, type=Path, help="the release's RaP/ folder")
    p.add_argument("--release-commit", required=True)
    p.add_argument("--out", required=True, type=Path)
    return p.parse_args()


def write_vocab(out: Path) -> Path:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS)) + list("abcdefghijklmnopqrstuvwxyz")
    tokens += [",", ".", "!", "?", "'", "-", ";", "(", ")"]
    path = out / "vocab.txt"
    path.write_text("\n".join(dict.fromkeys(tokens)) + "\n")
    (out / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512}, indent=2)
        + "\n"
    )
    return path


def bert_config(med, size: dict, vocab_size: int):
    cfg = med.BertConfig(
        vocab_size=vocab_size,
        hidden_size=size["hidden_size"],
        num_hidden_layers=size["num_layers"],
        num_attention_heads=size["num_heads"],
        intermediate_size=size["intermediate_size"],
        max_position_embeddings=size["max_position_embeddings"],
        pad_token_id=0,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        hidden_act="gelu",
        add_cross_attention=True,
    )
    cfg.encoder_width = size["vision_width"]
    return cfg


def patch_release(modules: dict, size: dict, vocab_file: Path | None) -> None:
    """Make the release's constructors build ``size`` offline: its create_vit hard-codes
    ViT-B/16, Rap_pretrain downloads DeiT and bert-base-uncased, init_tokenizer reads the hub."""
    vit, med, blip = modules["models.vit"], modules["models.med"], modules["models.blip"]
    from transformers import BertTokenizer

    def create_vit(vit_name, image_size, use_grad_checkpointing=False, ckpt_layer=0, drop_path_rate=0):
        target = torch.empty(0).device  # meta for the full-size key lists
        with torch.device("cpu"):  # its constructor calls .item(), which meta tensors cannot
            encoder = vit.VisionTransformer(
                img_size=size["image_size"],
                patch_size=size["patch_size"],
                embed_dim=size["vision_width"],
                depth=size["vision_depth"],
                num_heads=size["vision_heads"],
                drop_path_rate=drop_path_rate,
            )
        return encoder.to(target), size["vision_width"]

    def init_tokenizer():
        if vocab_file is None:  # meta build: ids only matter through len(tokenizer)
            return _FullSizeTokenizer()
        tok = BertTokenizer(str(vocab_file), do_lower_case=True)
        tok.add_special_tokens({"bos_token": "[DEC]"})
        tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        tok.enc_token_id = tok.additional_special_tokens_ids[0]
        return tok

    def from_pretrained(cls, name, config=None, **kwargs):  # the release's BertModel/LMHead from hub weights
        return cls(config=config, **kwargs)

    med.BertModel.from_pretrained = classmethod(from_pretrained)
    med.BertLMHeadModel.from_pretrained = classmethod(from_pretrained)
    if vocab_file is not None:  # small: the release's json files name bert-base's sizes

        def from_json_file(path):
            return bert_config(med, size, len(init_tokenizer()))

        med.BertConfig.from_json_file = staticmethod(from_json_file)
    for name in ("models.blip", "models.rap_pretrain", "models.rap_retrieval"):
        modules[name].create_vit = create_vit
        modules[name].init_tokenizer = init_tokenizer
    blip.create_vit = create_vit


class _FullSizeTokenizer:
    enc_token_id = 30523
    bos_token_id = 30522

    def __len__(self) -> int:
        return 30524


def import_release(src: Path) -> dict:
    sys.path.insert(0, str(src))
    import importlib

    names = ["models.vit", "models.med", "models.blip", "models.rap_pretrain", "models.rap_retrieval"]
    return {n: importlib.import_module(n) for n in names}


def release_function(src: Path, file: str, name: str, namespace: dict):
    """A top-level function of a release file, compiled from its source and run unchanged (the
    file itself imports decord, lmdb, av...: not needed for what is taken)."""
    tree = ast.parse((src / file).read_text())
    node = next(n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name)
    module = ast.Module(body=[node], type_ignores=[])
    exec(compile(module, str(src / file), "exec"), namespace)
    return namespace[name]


@torch.no_grad()
def perturb(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Every distinct parameter moves by N(0, PERTURB) (tied ones once: they are one tensor)."""
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=gen) * PERTURB)
    model.temp.fill_(0.05)


def key_table(model: torch.nn.Module) -> list[str]:
    """``key<TAB>shape<TAB>tied_to`` for every state-dict entry; tied_to is the first key that
    holds the same Parameter (the release saves tied weights under both names)."""
    first: dict[int, str] = {}
    rows = []
    for key, value in model.state_dict(keep_vars=True).items():
        twin = first.setdefault(id(value), key)
        shape = "x".join(str(s) for s in value.shape) or "scalar"
        rows.append(f"{key}\t{shape}\t{twin if twin != key else ''}")
    return rows


def release_video(frames_uint8: torch.Tensor, image_norm) -> torch.Tensor:
    """The release's loader: ``img_norm(vid_frm_array.float())`` per clip (ImageNorm, CLIP mean/std)."""
    return torch.stack([image_norm(clip.float()) for clip in frames_uint8])


@torch.no_grad()
def release_outputs(model, video, tokenizer, captions, pretrain: bool) -> dict:
    model.eval()
    V, K = video.shape[:2]
    text = tokenizer(captions, padding="max_length", truncation=True, max_length=MAX_LEN, return_tensors="pt")
    out = {"input_ids": text.input_ids.clone(), "attention_mask": text.attention_mask.clone()}
    # ITC, the evaluation's way
    text_out = model.text_encoder(text.input_ids, attention_mask=text.attention_mask, mode="text")
    text_emb = F.normalize(model.text_proj(text_out.last_hidden_state[:, 0, :]))
    frames = model.visual_encoder(video.view(-1, *video.shape[2:]))  # (V*K, 1+N, W)
    video_emb = F.normalize(model.vision_proj(frames[:, 0, :]).view(V, K, -1).mean(dim=1), dim=-1)
    out["itc"] = text_emb @ video_emb.t()
    averaged = frames.view(V, K, *frames.shape[1:]).mean(dim=1)  # training: frame-averaged tokens
    concatenated = frames.view(V, -1, frames.shape[-1])  # evaluation: K x (1+N) tokens
    enc_ids = text.input_ids.clone()
    enc_ids[:, 0] = tokenizer.enc_token_id
    T = len(captions)
    for name, tokens in (("itm_averaged", averaged), ("itm_concatenated", concatenated)):
        logits = torch.zeros(T, V, 2)
        for v in range(V):
            enc = tokens[v : v + 1].expand(T, -1, -1)
            o = model.text_encoder(
                enc_ids,
                attention_mask=text.attention_mask,
                encoder_hidden_states=enc,
                encoder_attention_mask=torch.ones(enc.shape[:-1], dtype=torch.long),
                return_dict=True,
            )
            logits[:, v] = model.itm_head(o.last_hidden_state[:, 0, :])
        out[name] = logits
    if pretrain:
        dec_ids = text.input_ids.clone()
        dec_ids[:, 0] = tokenizer.bos_token_id
        o = model.text_decoder(
            dec_ids,
            attention_mask=text.attention_mask,
            encoder_hidden_states=averaged[: min(V, T)],
            encoder_attention_mask=torch.ones(averaged[: min(V, T)].shape[:-1], dtype=torch.long),
            return_dict=True,
        )
        out["lm_logits"] = o.logits  # (T, L, vocab); text t with video t
    return out


class _Dataset:
    def __init__(self, text: list[str]) -> None:
        self.text = text
        self.txt2video = list(range(len(text)))


class _Loader:
    """What the release's evaluation() reads of its DataLoader: batches of (video, caption)."""

    def __init__(self, video: torch.Tensor, captions: list[str], batch_size: int) -> None:
        self.video, self.captions, self.batch_size = video, captions, batch_size
        self.dataset = _Dataset(captions)

    def __iter__(self):
        for i in range(0, len(self.video), self.batch_size):
            yield self.video[i : i + self.batch_size], self.captions[i : i + self.batch_size]


def main() -> None:
    args = parse_args()
    src, out = args.release_src.resolve(), args.out.resolve()
    os.chdir(src)  # the release reads configs/*.json relative to its folder
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    vocab_file = write_vocab(out)
    mods = import_release(src)
    utils = __import__("utils")  # the release's utils.py (MetricLogger, get_world_size)
    namespace = {"torch": torch, "F": F, "utils": utils, "time": time, "datetime": datetime, "dist": dist, "np": np}
    evaluation = release_function(src, "retrieval.py", "evaluation", namespace)
    pre_caption = release_function(src, "data/utils.py", "pre_caption", {"re": __import__("re")})
    image_norm_cls = release_function(src, "data/MSRVTT_dataset.py", "ImageNorm", {"torch": torch})
    image_norm = image_norm_cls(
        mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711)
    )  # as msrvtt7k_dataset (and every downstream dataset) builds it

    # full-size key lists (meta device: no memory, no weights)
    patch_release(mods, FULL, None)
    with torch.device("meta"):
        full_pre = mods["models.rap_pretrain"].Rap_pretrain(vit="fixture", image_size=256)
        full_ret = mods["models.rap_retrieval"].Rap_retrieval(vit="fixture", image_size=256)
    for name, model in (("rap_pretrain", full_pre), ("rap_retrieval", full_ret)):
        rows = key_table(model)
        (out / f"keys_{name}.tsv").write_text("key\tshape\ttied_to\n" + "\n".join(rows) + "\n")
        print(f"{name}: {len(rows)} keys")
    del full_pre, full_ret

    # small models with perturbed random weights
    patch_release(mods, SMALL, vocab_file)
    small_kw = {"embed_dim": SMALL["embed_dim"], "queue_size": SMALL["queue_size"]}
    pre = mods["models.rap_pretrain"].Rap_pretrain(vit="fixture", image_size=SMALL["image_size"], **small_kw)
    perturb(pre, gen)
    ret = mods["models.rap_retrieval"].Rap_retrieval(vit="fixture", image_size=SMALL["image_size"], **small_kw)
    perturb(ret, gen)
    config = {"small": SMALL, "k_test": K_TEST, "num_frm_test": FRAMES, "max_len": MAX_LEN}
    for name, model in (("pretrain", pre), ("retrieval", ret)):
        torch.save(
            {"model": model.state_dict(), "optimizer": {}, "config": config, "epoch": 0}, out / f"release_{name}.pth"
        )

    # inputs: a coarse random colour layout per clip (clips differ strongly) that drifts over
    # the frames by a random walk (frames differ too)
    V, S = len(CAPTIONS), SMALL["image_size"]
    base = F.interpolate(torch.rand(V, 3, 4, 4, generator=gen), size=(S, S), mode="nearest")[:, None]
    steps = torch.randn(V, FRAMES, 3, S, S, generator=gen).cumsum(1) * 0.05
    frames_uint8 = ((base + steps).clamp(0, 1) * 255).round().to(torch.uint8)
    video = release_video(frames_uint8, image_norm)
    captions = [pre_caption(c, 64) for c in CAPTIONS]  # as msrvtt7k_dataset.text
    tokenizer = pre.tokenizer
    outputs = {}
    run_args = types.SimpleNamespace(max_len=MAX_LEN, distributed=False)
    for name, model, pretrain in (("pretrain", pre, True), ("retrieval", ret, False)):
        o = release_outputs(model, video, tokenizer, captions, pretrain)
        # zero-shot the release's way: its retrieval model class loads the pre-training file
        evaluated = model
        if pretrain:
            evaluated = mods["models.rap_retrieval"].rap_retrieval_init(
                pretrained=str(out / "release_pretrain.pth"), image_size=SMALL["image_size"], vit="fixture", **small_kw
            )
        _, t2v = evaluation(
            evaluated, _Loader(video, captions, batch_size=4), tokenizer, "cpu", {"k_test": K_TEST}, run_args
        )
        o["t2v_final"] = torch.from_numpy(t2v)
        outputs[name] = o
    vlens = [8, 9, 15, 16, 17, 30, 31, 100, 241, 1000]
    frame_indices = {v: np.arange(0, v, v / FRAMES, dtype=int).tolist() for v in vlens}  # MSRVTT_dataset.py
    torch.save({"frames": frames_uint8}, out / "inputs.pt")
    torch.save(outputs, out / "outputs.pt")
    (out / "captions.json").write_text(
        json.dumps({"raw": CAPTIONS, "pre_caption": captions, "frame_indices": frame_indices}, indent=1) + "\n"
    )
    (out / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    write_provenance(out, args.release_commit, src)


def write_provenance(out: Path, commit: str, src: Path) -> None:
    import fairscale
    import timm
    import transformers

    files = ["models/rap_pretrain.py", "models/rap_retrieval.py", "models/med.py", "models/vit.py",
             "models/blip.py", "retrieval.py", "data/utils.py", "data/MSRVTT_dataset.py"]  # fmt: skip
    digests = "\n".join(f"- `RaP/{f}` sha256 {hashlib.sha256((src / f).read_bytes()).hexdigest()}" for f in files)
    written = "\n".join(
        f"- `{p.name}` sha256 {hashlib.sha256(p.read_bytes()).hexdigest()}"
        for p in sorted(out.iterdir())
        if p.name != "PROVENANCE.md"
    )
    (out / "PROVENANCE.md").write_text(
        f"""# Provenance of this fixture

Written by `tools/release_fixture/build.sh` (by hand, not CI) on {datetime.date.today().isoformat()}.

- Release: https://github.com/caskcsg/VLP, folder `RaP/`, commit `{commit}`.
- Its packages: transformers {transformers.__version__}, timm {timm.__version__},
  fairscale {fairscale.__version__} (installed `--no-deps`; tokenizers left out),
  torch {torch.__version__}, Python {sys.version.split()[0]}.
- Models: the release's `Rap_pretrain` and `Rap_retrieval` classes, unchanged, at the small
  configuration of `config.json` (its `create_vit`, `init_tokenizer` and `from_pretrained`
  replaced so that nothing is downloaded), random initialisation + N(0, {PERTURB}) on every
  parameter, seed {SEED}.
- Outputs: computed by those classes; `t2v_final` by the release's own `evaluation()`
  (retrieval.py, compiled from its source, unchanged) with k_test={K_TEST}, max_len={MAX_LEN},
  {FRAMES} frames; frames normalised by the release's `ImageNorm` with CLIP's mean/std;
  captions through the release's `pre_caption`. `keys_*.tsv`: the full-size models
  (ViT-B/16 at 256 px, BERT-base, vocabulary 30524) built on the meta device.

Release files used:
{digests}

Files written:
{written}
"""
    )


if __name__ == "__main__":
    main()
