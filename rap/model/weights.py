"""Pretrained weights at the paper scale, found offline and checked (DESIGN.md "Pretrained weights").

* Text: a transformers BERT checkpoint (``bert-base-uncased``): the directory named by
  ``model.text.weights`` (config.json, model.safetensors or pytorch_model.bin, vocab.txt),
  else the Hugging Face cache entry of ``model.text.name``.
* Video: a timm checkpoint of ``model.vision.timm_name`` (DeiT-B: ``timm/deit_base_patch16_224
  .fb_in1k``, model.safetensors): the file (or directory holding it) named by
  ``model.vision.weights``, else the Hugging Face cache entry timm itself would use.

With ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``) only what is on disk counts; otherwise
a missing cache entry is downloaded once, here, before anything else runs. Whatever is still
missing raises :class:`MissingWeightsError`, whose message says what to download and where to
put it. :func:`check_pretrained_weights` runs all of this at the start of a command.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from rap.config import ConfigError, ModelConfig, TextConfig, VisionConfig

log = logging.getLogger(__name__)

BERT_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
# Weights of a BERT pre-training checkpoint that RaP has no module for: the pooler and the
# next-sentence head. (The MLM head's transform and bias initialise the LM decoder's head; its
# decoder matrix is tied to the word embeddings.)
BERT_UNUSED_PREFIXES = ("pooler.", "bert.pooler.", "cls.seq_relationship.", "cls.predictions.decoder.")
# A timm ImageNet checkpoint's classifier: the video encoder has no head (num_classes=0).
TIMM_UNUSED_PREFIXES = ("head.", "head_dist.", "fc_norm.")


class MissingWeightsError(ConfigError):
    """A pretrained weight the config asks for is not on disk (and cannot be downloaded)."""


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` as huggingface_hub reads them."""
    return any(
        os.environ.get(k, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_cache() -> str:
    """The cache directory, read from the environment now (huggingface_hub reads it at import)."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return constants.HF_HUB_CACHE


def _first(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _snapshot(repo_id: str, patterns: list[str]) -> Path | None:
    """The cache snapshot of ``repo_id`` (fetched first unless offline); None when unavailable."""
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(repo_id, allow_patterns=patterns, cache_dir=_hub_cache(), local_files_only=hub_offline())
        )
    except Exception as err:  # noqa: BLE001 - hub errors (offline, 404, network) all mean "not here"
        log.debug("no snapshot of %s: %s", repo_id, err)
        return None


def _missing(what: str, key: str, repo_id: str, need: str) -> MissingWeightsError:
    offline = " (HF_HUB_OFFLINE is set: nothing is downloaded)" if hub_offline() else ""
    return MissingWeightsError(
        f"{what}: {need} not found{offline}. Download it with\n"
        f"    huggingface-cli download {repo_id}\n"
        f"(into the Hugging Face cache, {_hub_cache()}; HF_HOME/HF_HUB_CACHE move it), or with\n"
        f"    huggingface-cli download {repo_id} --local-dir DIR\n"
        f"and set {key}: DIR in params.yaml."
    )


# ---------------------------------------------------------------------------------------
# Text: BERT
# ---------------------------------------------------------------------------------------


def bert_dir(cfg: TextConfig) -> Path:
    """Directory of the BERT checkpoint ``model.text`` asks for (see module docstring)."""
    what = f"text encoder {cfg.name!r}"
    if cfg.weights:
        folder = Path(cfg.weights).expanduser()
        if not (folder / "config.json").is_file() or _first(folder, BERT_WEIGHT_FILES) is None:
            raise _missing(
                what,
                "model.text.weights",
                cfg.name,
                f"{folder}/config.json and {folder}/{' or '.join(BERT_WEIGHT_FILES)}",
            )
        return folder
    folder = _snapshot(
        cfg.name,
        ["config.json", "model.safetensors", *TOKENIZER_FILES, "tokenizer_config.json", "special_tokens_map.json"],
    )
    if folder is None or not (folder / "config.json").is_file() or _first(folder, BERT_WEIGHT_FILES) is None:
        raise _missing(what, "model.text.weights", cfg.name, "config.json and model.safetensors")
    return folder


def tokenizer_source(cfg: TextConfig) -> str:
    """Where the tokenizer ``model.text.tokenizer`` loads from: itself when it is a directory,
    the BERT directory when it is the model's own tokenizer, else that id's cache snapshot."""
    if Path(cfg.tokenizer).is_dir():  # a local tokenizer directory (vocab.txt + tokenizer_config.json)
        folder = Path(cfg.tokenizer)
    elif cfg.pretrained and cfg.tokenizer == cfg.name:
        folder = bert_dir(cfg)
    else:
        folder = _snapshot(
            cfg.tokenizer, [*TOKENIZER_FILES, "tokenizer_config.json", "special_tokens_map.json", "config.json"]
        )
    if folder is None or _first(folder, TOKENIZER_FILES) is None:
        raise _missing(
            f"tokenizer {cfg.tokenizer!r}", "model.text.weights", cfg.tokenizer, " or ".join(TOKENIZER_FILES)
        )
    return str(folder)


def _checkpoint_keys(path: Path) -> list[str]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return list(f.keys())
    return list(torch.load(path, map_location="cpu", weights_only=True))


def _checkpoint_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict"):  # DeiT's own .pth files wrap the state dict
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    return state


@dataclass(frozen=True)
class LoadReport:
    """What a checkpoint gave: the keys ``used``, and those RaP has no module for (``unused``,
    only ever the prefixes named above)."""

    source: Path
    used: tuple[str, ...]
    unused: tuple[str, ...]


def bert_dropout(cfg: TextConfig) -> dict[str, float]:
    """The BertConfig fields ``model.text.dropout`` sets (none when null: the model's own)."""
    if cfg.dropout is None:
        return {}
    return {"hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout}


def load_bert(cfg: TextConfig):
    """``(BertModel without pooler, lm_head_state, LoadReport)`` from :func:`bert_dir`, with the
    checkpoint's config except the dropout ``model.text.dropout`` sets (:func:`bert_dropout`).

    Every BertModel parameter must come from the checkpoint and every checkpoint weight must be
    used, except the pooler / NSP head (RaP has none) and the tied MLM decoder matrix; the MLM
    head's transform and bias are returned to initialise the LM decoder's head (appendix A.1).
    """
    from transformers import BertModel

    folder = bert_dir(cfg)
    weights = _first(folder, BERT_WEIGHT_FILES)
    bert, info = BertModel.from_pretrained(
        str(folder), add_pooling_layer=False, output_loading_info=True, local_files_only=True, **bert_dropout(cfg)
    )
    if info["missing_keys"] or info["mismatched_keys"]:
        raise ConfigError(
            f"{weights}: not a BERT checkpoint for {cfg.name!r}: missing "
            f"{sorted(info['missing_keys'])[:5]}, mismatched "
            f"{sorted(map(str, info['mismatched_keys']))[:5]}"
        )
    lm_head = {
        k.removeprefix("cls.predictions."): v
        for k, v in _checkpoint_state(weights).items()
        if k.startswith("cls.predictions.") and not k.startswith("cls.predictions.decoder.")
    }
    leftover = [
        k
        for k in info["unexpected_keys"]
        if not k.startswith(BERT_UNUSED_PREFIXES) and not k.startswith("cls.predictions.")
    ]
    if leftover:
        raise ConfigError(f"{weights}: weights RaP would silently ignore: {sorted(leftover)[:8]}")
    keys = _checkpoint_keys(weights)
    unused = sorted(k for k in keys if k.startswith(BERT_UNUSED_PREFIXES))
    if unused:
        log.info("%s: not used by RaP (no pooler / NSP head; MLM decoder tied): %s", weights, unused)
    report = LoadReport(weights, tuple(k for k in keys if k not in set(unused)), tuple(unused))
    return bert, lm_head, report


# ---------------------------------------------------------------------------------------
# Video: timm ViT (DeiT-B)
# ---------------------------------------------------------------------------------------


def timm_weights_file(cfg: VisionConfig) -> Path:
    """The timm checkpoint file ``model.vision`` asks for (see module docstring)."""
    import timm

    pretrained = timm.models.get_pretrained_cfg(cfg.timm_name)
    repo_id = getattr(pretrained, "hf_hub_id", None) or f"timm/{cfg.timm_name}"
    what = f"video encoder {cfg.timm_name!r}"
    if cfg.weights:
        path = Path(cfg.weights).expanduser()
        found = _first(path, TIMM_WEIGHT_FILES) if path.is_dir() else (path if path.is_file() else None)
        if found is None:
            raise _missing(
                what,
                "model.vision.weights",
                repo_id,
                f"{path} (a checkpoint file, or a directory with {' or '.join(TIMM_WEIGHT_FILES)})",
            )
        return found
    folder = _snapshot(repo_id, ["model.safetensors", "config.json"])
    found = _first(folder, TIMM_WEIGHT_FILES) if folder is not None else None
    if found is None:
        raise _missing(what, "model.vision.weights", repo_id, "model.safetensors")
    return found


def load_timm_weights(vit: torch.nn.Module, path: Path) -> LoadReport:
    """Load a timm-format checkpoint into ``vit`` as timm's own ``pretrained=True`` does
    (``checkpoint_filter_fn``: the absolute position embedding resampled bicubically to the
    model's grid, 14x14 -> 16x16 for DeiT-B at 256 px), then insist that every parameter of
    ``vit`` was loaded and every checkpoint weight used, the ImageNet classifier excepted."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = checkpoint_filter_fn(_checkpoint_state(path), vit)
    unused = sorted(k for k in state if k.startswith(TIMM_UNUSED_PREFIXES) and k not in vit.state_dict())
    state = {k: v for k, v in state.items() if k not in set(unused)}
    result = vit.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ConfigError(
            f"{path}: not a checkpoint of this ViT: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    if unused:
        log.info("%s: not used by RaP (ImageNet classifier): %s", path, unused)
    return LoadReport(path, tuple(state), tuple(unused))


# ---------------------------------------------------------------------------------------
# The up-front check
# ---------------------------------------------------------------------------------------


def check_pretrained_weights(model: ModelConfig) -> list[Path]:
    """Resolve every pretrained weight ``model`` asks for (downloading unless offline);
    raises :class:`MissingWeightsError` naming what to fetch. Call before any other work."""
    found: list[Path] = []
    if model.text.pretrained:
        found.append(bert_dir(model.text))
    if model.text.tokenizer != "builtin":
        found.append(Path(tokenizer_source(model.text)))
    if model.vision.pretrained:
        found.append(timm_weights_file(model.vision))
    return found
