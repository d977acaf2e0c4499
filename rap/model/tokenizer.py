"""Text tokenizer (paper 3.1): a transformers fast tokenizer with the task tokens of A.1.

``text.tokenizer: builtin`` builds an offline lowercase WordPiece tokenizer in memory from the
vocabulary in :mod:`rap.model.vocab` (BERT normaliser and pre-tokeniser, ``[CLS] text [SEP]``
template), so the embedded scale never touches the model hub. Any other value is a
transformers id loaded with ``AutoTokenizer.from_pretrained`` and extended, BLIP style, with
``[ENC]`` (start of the ITM input) and ``[DEC]`` (BOS of the LM decoder) as special tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from rap.config import ConfigError, TextConfig
from rap.model.vocab import SPECIAL_TOKENS, TASK_TOKENS, vocabulary
from rap.model.weights import tokenizer_source

ENC_TOKEN, DEC_TOKEN = TASK_TOKENS


def build_builtin_tokenizer(model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """The offline WordPiece tokenizer; deterministic ids (see :func:`rap.model.vocab.vocabulary`)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(vocabulary())}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    pad, unk, cls, sep, mask = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=unk,
        pad_token=pad,
        cls_token=cls,
        sep_token=sep,
        mask_token=mask,
        additional_special_tokens=list(TASK_TOKENS),
        model_max_length=model_max_length,
        padding_side="right",
        truncation_side="right",
    )


def build_tokenizer(text_cfg: TextConfig) -> PreTrainedTokenizerFast:
    """``builtin`` -> :func:`build_builtin_tokenizer`; else ``AutoTokenizer`` + [ENC]/[DEC]."""
    if text_cfg.tokenizer == "builtin":
        return build_builtin_tokenizer()
    source = tokenizer_source(text_cfg)  # the model's own directory, or the cache (weights.py)
    try:
        tok = AutoTokenizer.from_pretrained(source, use_fast=True, local_files_only=True)
    except OSError as err:
        raise ConfigError(
            f"model.text.tokenizer: cannot load {text_cfg.tokenizer!r} ({err}); use 'builtin' "
            "offline or make the tokenizer available in the Hugging Face cache"
        ) from err
    missing = [t for t in TASK_TOKENS if t not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing})
    for name in ("cls_token", "sep_token", "pad_token"):
        if getattr(tok, name) is None:
            raise ConfigError(
                f"model.text.tokenizer: {text_cfg.tokenizer!r} has no {name}; a BERT-style "
                "tokenizer with [CLS]/[SEP]/[PAD] is required"
            )
    return tok


@dataclass(frozen=True)
class SpecialIds:
    """Ids the model needs: padding, [CLS]/[SEP] (text structure), [ENC]/[DEC] (task prompts)."""

    pad: int
    cls: int
    sep: int
    enc: int
    dec: int

    @classmethod
    def of(cls, tok: PreTrainedTokenizerFast) -> "SpecialIds":
        enc, dec = tok.convert_tokens_to_ids([ENC_TOKEN, DEC_TOKEN])
        return cls(pad=tok.pad_token_id, cls=tok.cls_token_id, sep=tok.sep_token_id, enc=enc, dec=dec)
