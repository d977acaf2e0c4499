"""RaP model: per-frame ViT video encoder with MAC masking, BERT text encoder, heads, losses."""

from rap.model.features import TextFeatures, VideoFeatures
from rap.model.rap import RaPModel
from rap.model.tokenizer import SpecialIds, build_tokenizer

__all__ = ["RaPModel", "VideoFeatures", "TextFeatures", "build_tokenizer", "SpecialIds"]
