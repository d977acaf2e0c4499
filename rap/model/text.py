"""Text encoder (paper 3.2) and its two video-grounded modes of appendix A.1 (BLIP).

One BERT serves three passes, sharing weights as in BLIP:

* unimodal encoder: plain bidirectional BERT -> T_cls and token features;
* video-grounded encoder (ITM): the same blocks with a cross-attention layer inserted between
  self-attention and feed-forward in each block (the only new parameters), attending to the
  frame-averaged video tokens; the input starts with [ENC] instead of [CLS];
* video-grounded decoder (LM): the same embeddings, cross-attention and feed-forward modules,
  but *separate* causal self-attention layers; the input starts with [DEC] (BOS). The output
  layer is tied to the word embeddings.

transformers 5 only runs a BertLayer's cross-attention when ``config.is_decoder`` is True,
which also makes its self-attention causal, so "add_cross_attention on an encoder" (BLIP's
patched BERT) is not available. We therefore keep a stock ``BertModel`` (so pretrained
checkpoints load unchanged) and run its sub-modules in our own short layer loop, slotting in
the injected cross-attention and the decoder's self-attention where the pass needs them.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import BertConfig, BertModel
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert.modeling_bert import BertAttention, BertPredictionHeadTransform, eager_attention_forward

from rap.config import ConfigError, TextConfig
from rap.model.weights import bert_dropout, load_bert

# Keys and values of every cross-attention layer: [(K, V)] with K, V (B, heads, M, head_dim).
VideoKV = list[tuple[torch.Tensor, torch.Tensor]]


class TextEncoder(nn.Module):
    """BERT with injected cross-attention (ITM) and a causal decoder view (LM)."""

    def __init__(self, cfg: TextConfig, vocab_size: int, pad_id: int, vision_width: int) -> None:
        super().__init__()
        lm_head: dict[str, torch.Tensor] = {}
        if cfg.pretrained:
            if cfg.name == "tiny":
                raise ConfigError("model.text: name 'tiny' has no pretrained weights; set pretrained: false")
            self.bert, lm_head, _ = load_bert(cfg)  # every weight checked, dropout set (rap/model/weights.py)
            self.bert.resize_token_embeddings(vocab_size)  # room for [ENC] / [DEC]
        else:
            config = BertConfig(
                vocab_size=vocab_size,
                hidden_size=cfg.hidden_size,
                num_hidden_layers=cfg.num_layers,
                num_attention_heads=cfg.num_heads,
                intermediate_size=cfg.intermediate_size,
                pad_token_id=pad_id,
                max_position_embeddings=max(512, cfg.max_len_eval),
                **bert_dropout(cfg),
            )
            self.bert = BertModel(config, add_pooling_layer=False)
        config = self.bert.config
        if cfg.max_len_eval > config.max_position_embeddings:
            raise ConfigError(
                f"model.text.max_len_eval={cfg.max_len_eval} exceeds the "
                f"{config.max_position_embeddings} positions of {cfg.name!r}"
            )
        self.width: int = config.hidden_size
        self.grad_checkpointing = False
        layers = self.bert.encoder.layer
        # Injected cross-attention (ITM and LM); keys/values read the ViT width.
        self.cross_attn = nn.ModuleList()
        for i in range(len(layers)):
            attn = BertAttention(config, layer_idx=i, is_cross_attention=True)
            attn.self.key = nn.Linear(vision_width, attn.self.all_head_size)
            attn.self.value = nn.Linear(vision_width, attn.self.all_head_size)
            self.cross_attn.append(attn)
        self.cross_attn.apply(self.bert._init_weights)
        # The decoder's own self-attention, initialised as a copy of the encoder's (BLIP loads
        # the same BERT checkpoint into both).
        self.dec_self_attn = nn.ModuleList(copy.deepcopy(layer.attention) for layer in layers)
        for attn in self.dec_self_attn:
            attn.self.is_causal = True
        self.lm_transform = BertPredictionHeadTransform(config)
        self.lm_transform.apply(self.bert._init_weights)
        self.lm_bias = nn.Parameter(torch.zeros(config.vocab_size))
        if lm_head:
            self._init_lm_head(lm_head)

    def _init_lm_head(self, lm_head: dict[str, torch.Tensor]) -> None:
        """The LM head from the checkpoint's MLM head (``cls.predictions.transform`` / ``.bias``),
        as BLIP's decoder starts from BERT's; the two task tokens' biases stay 0."""
        transform = {
            k.removeprefix("transform.")
            .replace("LayerNorm.gamma", "LayerNorm.weight")
            .replace("LayerNorm.beta", "LayerNorm.bias"): v
            for k, v in lm_head.items()
            if k.startswith("transform.")
        }
        if transform:
            self.lm_transform.load_state_dict(transform)  # strict: all four tensors or an error
        if "bias" in lm_head:
            with torch.no_grad():
                self.lm_bias[: lm_head["bias"].numel()] = lm_head["bias"]

    def _mask(self, allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, 1, Lq, Lk) "may attend" -> what the attention backend takes (SDPA: bool; eager: additive)."""
        if self.bert.config._attn_implementation == "sdpa":
            return allowed
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )

    def video_kv(self, video_hidden: torch.Tensor) -> VideoKV:
        """Keys and values of every cross-attention layer for these videos (B, M, W).

        They depend on the video only: ITM re-ranking computes them once per video and
        reuses them for each of the video's candidate texts (``forward(video_kv=...)``)."""
        return [self._layer_kv(i, video_hidden) for i in range(len(self.cross_attn))]

    def _layer_kv(self, i: int, video_hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sa = self.cross_attn[i].self
        shape = (*video_hidden.shape[:-1], -1, sa.attention_head_size)
        return sa.key(video_hidden).view(shape).transpose(1, 2), sa.value(video_hidden).view(shape).transpose(1, 2)

    def _cross_attend(
        self, i: int, h: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Layer i's injected cross-attention on precomputed keys/values: what
        ``BertAttention(h, None, video_hidden, mask)`` computes (same attention backend)."""
        attn = self.cross_attn[i]
        sa = attn.self
        query = sa.query(h).view(*h.shape[:-1], -1, sa.attention_head_size).transpose(1, 2)
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(sa.config._attn_implementation, eager_attention_forward)
        out, _ = attend(sa, query, kv[0], kv[1], mask, dropout=sa.dropout.p if sa.training else 0.0, scaling=sa.scaling)
        return attn.output(out.reshape(*h.shape[:-1], -1).contiguous(), h)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        video_hidden: torch.Tensor | None = None,
        video_mask: torch.Tensor | None = None,
        causal: bool = False,
        video_kv: VideoKV | None = None,
    ) -> torch.Tensor:
        """Last hidden states (B, L, H).

        ``video_hidden`` (B, M, W) switches the injected cross-attention on (ITM/LM);
        ``video_kv`` (from :meth:`video_kv`, B rows) does too, with the keys and values given
        (``video_mask`` then describes their M positions); ``causal`` uses the decoder's causal
        self-attention layers (LM).
        """
        if causal and video_hidden is None and video_kv is None:
            raise ValueError("the LM decoder is video-grounded: pass video_hidden")
        grounded = video_hidden is not None or video_kv is not None
        h = self.bert.embeddings(input_ids=input_ids)
        b, n = input_ids.shape
        keys = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L)
        if causal:
            tri = torch.ones(n, n, dtype=torch.bool, device=h.device).tril()
            keys = keys & tri[None, None]
        self_mask = self._mask(keys.expand(b, 1, n, n), h.dtype)
        cross_mask = None
        if grounded:
            n_video = video_kv[0][0].shape[2] if video_kv is not None else video_hidden.shape[1]
            vm = video_mask if video_mask is not None else torch.ones(b, n_video, dtype=torch.bool, device=h.device)
            cross_mask = self._mask(vm.bool()[:, None, None, :].expand(b, 1, n, vm.shape[1]), h.dtype)

        for i, layer in enumerate(self.bert.encoder.layer):

            def block(h: torch.Tensor, i: int = i, layer: nn.Module = layer) -> torch.Tensor:
                attn = self.dec_self_attn[i] if causal else layer.attention
                h = attn(h, self_mask)[0]
                if grounded:
                    # Without a cache, keys/values are computed inside the block, so gradient
                    # checkpointing recomputes them rather than keeping them for the backward.
                    kv = video_kv[i] if video_kv is not None else self._layer_kv(i, video_hidden)
                    h = self._cross_attend(i, h, kv, cross_mask)
                return layer.feed_forward_chunk(h)  # intermediate + output (FFN, residual, LN)

            if self.grad_checkpointing and self.training:
                h = checkpoint(block, h, use_reentrant=False)
            else:
                h = block(h)
        return h

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, L, V); output weights tied to the word embeddings."""
        return nn.functional.linear(
            self.lm_transform(hidden), self.bert.embeddings.word_embeddings.weight, self.lm_bias
        )


def with_prompt(input_ids: torch.Tensor, token_id: int) -> torch.Tensor:
    """Replace position 0 ([CLS]) by a task token ([ENC] for ITM, [DEC] for LM), A.1."""
    out = input_ids.clone()
    out[:, 0] = token_id
    return out
