"""``rap import-release``: a checkpoint of the authors' release -> a rap checkpoint.

The release (caskcsg/VLP, folder RaP/, a BLIP fork) saves ``{'model', 'optimizer', 'config',
'epoch'}``; ``model`` is the state dict of ``Rap_pretrain`` (1,272 keys at paper scale: ViT,
BERT with cross-attention, the LM decoder, momentum copies, queues) or of ``Rap_retrieval``
(949 keys: no decoder). The file is read with ``torch.load(weights_only=True)``: no code in
it runs (only tensors, dicts, lists and plain values are accepted).

Every release key is either *mapped* to a rap key (:data:`RULES`), *tied* (the release saves
the LM decoder's shared weights under both names; each copy is checked equal to its twin and
dropped), or *dropped* with a reason. An unknown key is an error, so a file of another model
stops the import. Three values change on the way:

* ``[DEC]``/``[ENC]``: the release's tokenizer adds ``[DEC]`` (id V-2) then ``[ENC]`` (V-1),
  rap's ``[ENC]`` then ``[DEC]`` (:mod:`rap.model.tokenizer`): the last two rows of every word
  embedding and the last two LM-bias entries are swapped;
* token types: the release's BERT (med.py) has no token-type embedding; rap's stock BERT
  adds row 0 of its own to every token, so it is written as zeros;
* pixels: the release normalises frames with CLIP's mean/std, not ImageNet's; the rap
  checkpoint's params record ``model.vision.pixel_mean`` / ``pixel_std`` = CLIP's, and
  evaluation and fine-tuning adopt them (:func:`adopt_checkpoint_pixels`). The weights
  themselves are not altered for it.

The written checkpoint (``DIR/checkpoint.pt``) holds ``model`` and ``params`` (this command's
resolved params with CLIP's pixel statistics, plus ``release.*`` provenance: source file,
its sha256, layout, epoch); ``DIR/import.json`` lists what was mapped, tied and dropped.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from rap.atomic import write_json_atomic
from rap.checkpoint_io import atomic_save, file_digest
from rap.config import CLIP_MEAN, CLIP_STD, ModelConfig
from rap.errors import RapError

__all__ = [
    "ReleaseImportError",
    "Conversion",
    "QUEUE_STATE",
    "classify",
    "read_release_state",
    "convert_state",
    "import_release",
    "adopt_checkpoint_pixels",
]

log = logging.getLogger(__name__)

_POSITION_IDS = "a buffer of the position indices 0..511, not a weight (rap's BERT makes its own)"
_QUEUE = (
    "momentum-contrast feature queue: training state, not a weight (rap's training starts its "
    "own queue, empty, and fills it as it goes)"
)
_MOMENTUM_CROSS = (
    "the momentum text encoder's cross-attention: the release's momentum tower only runs the "
    "unimodal pass, so these never influence anything; rap's momentum tower has none"
)

# (release key pattern, rap key template or None, reason when None). First match wins.
RULES: tuple[tuple[str, str | None, str], ...] = (
    (r"visual_encoder\.(.+)", r"vision.vit.\1", ""),
    (r"visual_encoder_m\.(.+)", r"momentum.vision.vit.\1", ""),
    (r"(vision_proj|text_proj|itm_head)\.(weight|bias)", r"\1.\2", ""),
    (r"vision_proj_m\.(weight|bias)", r"momentum.vision_proj.\1", ""),
    (r"text_proj_m\.(weight|bias)", r"momentum.text_proj.\1", ""),
    (r"temp", "temp", ""),
    (r"text_encoder\.embeddings\.position_ids", None, _POSITION_IDS),
    (r"text_encoder\.encoder\.layer\.(\d+)\.crossattention\.(.+)", r"text.cross_attn.\1.\2", ""),
    (r"text_encoder\.(.+)", r"text.bert.\1", ""),
    (r"text_encoder_m\.embeddings\.position_ids", None, _POSITION_IDS),
    (r"text_encoder_m\.encoder\.layer\.\d+\.crossattention\..+", None, _MOMENTUM_CROSS),
    (r"text_encoder_m\.(.+)", r"momentum.text.bert.\1", ""),
    (r"text_decoder\.bert\.embeddings\.position_ids", None, _POSITION_IDS),
    (r"text_decoder\.bert\.encoder\.layer\.(\d+)\.attention\.(.+)", r"text.dec_self_attn.\1.\2", ""),
    (r"text_decoder\.cls\.predictions\.transform\.(.+)", r"text.lm_transform.\1", ""),
    (r"text_decoder\.cls\.predictions\.bias", "text.lm_bias", ""),
    (r"(image_queue|text_queue|idx_queue|queue_ptr)", None, _QUEUE),
)

# Tied copies: release key pattern -> the key it must equal (the LM decoder shares every
# weight but its self-attention with the text encoder; its output layer is the word embedding).
TIED: tuple[tuple[str, str], ...] = (
    (r"text_decoder\.cls\.predictions\.decoder\.weight", "text_encoder.embeddings.word_embeddings.weight"),
    (r"text_decoder\.cls\.predictions\.decoder\.bias", "text_decoder.cls.predictions.bias"),
    # every decoder weight but its own self-attention (mapped) and the position-id buffer (dropped)
    (r"text_decoder\.bert\.((?!encoder\.layer\.\d+\.attention\.|embeddings\.position_ids).+)", r"text_encoder.\1"),
)

_WORD_EMBEDDINGS = (
    "text.bert.embeddings.word_embeddings.weight",
    "momentum.text.bert.embeddings.word_embeddings.weight",
)
_TOKEN_TYPES = (
    "text.bert.embeddings.token_type_embeddings.weight",
    "momentum.text.bert.embeddings.token_type_embeddings.weight",
)


# rap's momentum-contrast queue buffers: training state an imported checkpoint does not carry
# (the release's queues are dropped, _QUEUE); fine-tuning starts them empty.
QUEUE_STATE = ("momentum.video_queue", "momentum.text_queue", "momentum.id_queue", "momentum.ptr", "momentum.filled")


class ReleaseImportError(RapError):
    """A release checkpoint that cannot be imported (unreadable, unknown keys, tied copies that differ)."""


@dataclass
class Conversion:
    """The rap state dict and the fate of every release key."""

    state: dict[str, torch.Tensor]
    mapped: dict[str, str] = field(default_factory=dict)  # release key -> rap key
    tied: dict[str, str] = field(default_factory=dict)  # release key -> its twin
    dropped: dict[str, str] = field(default_factory=dict)  # release key -> reason
    fixes: list[str] = field(default_factory=list)

    @property
    def layout(self) -> str:
        return "pretrain" if any(k.startswith("text_decoder.") for k in (*self.tied, *self.mapped)) else "retrieval"

    def report(self) -> dict[str, Any]:
        return {
            "layout": self.layout,
            "counts": {"mapped": len(self.mapped), "tied": len(self.tied), "dropped": len(self.dropped)},
            "fixes": self.fixes,
            "mapped": self.mapped,
            "tied": self.tied,
            "dropped": self.dropped,
        }


def read_release_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state dict, the file's other entries but the optimiser)`` of a release checkpoint,
    loaded with ``weights_only=True`` (no pickled code runs)."""
    path = Path(path)
    if not path.is_file():
        raise ReleaseImportError(f"{path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torn file, pickle with code in it, not a torch file
        text = str(err)
        reason = (text.split("WeightsUnpickler error:")[-1].split("Check the documentation")[0]).split()
        raise ReleaseImportError(
            f"{path}: cannot be read as a weights-only checkpoint (rap never loads one with "
            f"weights_only=False: that would run code from the file): {' '.join(reason)[:300]}"
        ) from err
    state = ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(state, Mapping) or not state:
        keys = sorted(ckpt)[:5] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ReleaseImportError(f"{path}: no 'model' state dict (found {keys}): not a release checkpoint")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ReleaseImportError(f"{path}: 'model' entries that are not tensors: {bad[:5]}")
    extra = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer")}
    return dict(state), extra


def _match(patterns, key: str):
    for pattern, *rest in patterns:
        m = re.fullmatch(pattern, key)
        if m:
            return m, rest
    return None, None


def classify(key: str) -> tuple[str, str]:
    """The fate of one release key: ``("mapped", rap key)``, ``("tied", twin key)`` or
    ``("dropped", reason)``; an unknown key raises."""
    m, rest = _match(TIED, key)
    if m is not None:
        return "tied", m.expand(rest[0])
    m, rest = _match(RULES, key)
    if m is None:
        raise ReleaseImportError(f"no rule maps the release key {key!r}")
    template, reason = rest
    return ("dropped", reason) if template is None else ("mapped", m.expand(template))


def convert_state(release: Mapping[str, torch.Tensor], source: str = "release checkpoint") -> Conversion:
    """Map every key of a release state dict (pre-training or retrieval layout) to rap's."""
    if "visual_encoder.pos_embed" not in release or "text_encoder.embeddings.word_embeddings.weight" not in release:
        raise ReleaseImportError(
            f"{source}: no visual_encoder.pos_embed / text_encoder word embeddings: not a RaP (BLIP) state dict"
        )
    out = Conversion(state={})
    unknown = []
    for key, value in release.items():
        try:
            fate, target = classify(key)
        except ReleaseImportError:
            unknown.append(key)
            continue
        if fate == "tied":
            if target not in release:
                raise ReleaseImportError(f"{source}: {key} is a tied copy of {target}, which is missing")
            if release[target].shape != value.shape or not torch.equal(release[target], value):
                raise ReleaseImportError(f"{source}: {key} should equal its tied twin {target} but differs")
            out.tied[key] = target
        elif fate == "dropped":
            out.dropped[key] = target
        else:
            out.mapped[key] = target
            out.state[target] = value.detach().clone().contiguous()
    if unknown:
        raise ReleaseImportError(f"{source}: {len(unknown)} key(s) no rule maps: {unknown[:5]}")
    _fix_task_tokens(out)
    _add_token_types(out)
    return out


def _swap_last_two(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t[[-2, -1]] = t[[-1, -2]]
    return t


def _fix_task_tokens(out: Conversion) -> None:
    """Release ids: [DEC] = V-2, [ENC] = V-1; rap's: [ENC] = V-2, [DEC] = V-1."""
    for key in (*_WORD_EMBEDDINGS, "text.lm_bias"):
        if key in out.state:
            if out.state[key].shape[0] < 2:
                raise ReleaseImportError(f"{key}: {tuple(out.state[key].shape)} has no task-token rows")
            out.state[key] = _swap_last_two(out.state[key])
            out.fixes.append(f"{key}: last two rows swapped ([DEC]/[ENC] -> [ENC]/[DEC])")


def _add_token_types(out: Conversion) -> None:
    """The release's BERT has no token-type embedding: rap's (2, H) table is written as zeros."""
    for words, types in zip(_WORD_EMBEDDINGS, _TOKEN_TYPES):
        if words in out.state:
            out.state[types] = torch.zeros(2, out.state[words].shape[1], dtype=out.state[words].dtype)
            out.fixes.append(f"{types}: zeros (the release's BERT adds no token-type embedding)")


def release_params(flat: Mapping[str, Any], source: Path, digest: str, layout: str, extra: Mapping[str, Any]):
    """The imported checkpoint's params: ``flat`` with CLIP's pixel statistics and provenance."""
    params = dict(flat)
    params["model.vision.pixel_mean"] = tuple(CLIP_MEAN)
    params["model.vision.pixel_std"] = tuple(CLIP_STD)
    params["release.source"] = str(source)
    params["release.sha256"] = digest
    params["release.layout"] = layout
    if isinstance(extra.get("epoch"), int):
        params["release.epoch"] = extra["epoch"]
    return params


def import_release(path: Path, out_dir: Path, flat_params: Mapping[str, Any]) -> Path:
    """Convert ``path`` into ``out_dir/checkpoint.pt`` (+ ``import.json``); returns the checkpoint."""
    path, out_dir = Path(path), Path(out_dir)
    state, extra = read_release_state(path)
    conversion = convert_state(state, str(path))
    digest = file_digest(path)
    params = release_params(flat_params, path, digest, conversion.layout, extra)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "checkpoint.pt"
    atomic_save({"model": conversion.state, "params": params, "stage": "import-release", "step": 0}, target)
    write_json_atomic({"source": str(path), "sha256": digest, **conversion.report()}, out_dir / "import.json")
    log.info(
        "%s (%s layout): %d keys mapped, %d tied copies checked and dropped, %d dropped -> %s",
        path,
        conversion.layout,
        len(conversion.mapped),
        len(conversion.tied),
        len(conversion.dropped),
        target,
    )
    return target


def adopt_checkpoint_pixels(model_cfg: ModelConfig, checkpoint_params: Mapping[str, Any] | None) -> ModelConfig:
    """``model_cfg`` with the pixel statistics a checkpoint records (they belong to its weights:
    an imported release checkpoint needs CLIP's); unchanged when it records none."""
    if not checkpoint_params or "model.vision.pixel_mean" not in checkpoint_params:
        return model_cfg
    mean = tuple(float(x) for x in checkpoint_params["model.vision.pixel_mean"])
    std = tuple(float(x) for x in checkpoint_params["model.vision.pixel_std"])
    vision = model_cfg.vision
    if (mean, std) == (tuple(vision.pixel_mean), tuple(vision.pixel_std)):
        return model_cfg
    log.info("the checkpoint's weights expect pixel mean %s / std %s: using them", mean, std)
    return dataclasses.replace(model_cfg, vision=dataclasses.replace(vision, pixel_mean=mean, pixel_std=std))
