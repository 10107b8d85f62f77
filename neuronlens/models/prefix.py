"""Prefix tuning's keys and values (Li & Liang 2021): extra attention positions in every layer.

A :class:`Prefix` holds ``p`` trainable key and value vectors per layer. Every attention
layer attends to them before the input's own positions; nothing is added to the sequence, so
the residual stream, the neuron sites and the input's positions are those of the plain input
(the prefix is keys and values only). The model receives it as a key/value cache
(``past_key_values``) and an attention mask extended by ``p`` ones; T5's encoder takes no
cache, so prefixes run on BERT, RoBERTa, GPT-2 and Llama-family models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import DynamicCache

from neuronlens.errors import NeuronLensError, ShapeMismatchError


@dataclass
class Prefix:
    """``kv``: ``[layers, 2, p, kv_heads * head_dim]`` (keys, then values, of each layer)."""

    kv: Tensor

    @property
    def n_tokens(self) -> int:
        return int(self.kv.shape[2])

    @property
    def shape(self) -> torch.Size:
        return self.kv.shape

    def to(self, *args, **kwargs) -> Prefix:
        return Prefix(self.kv.to(*args, **kwargs))

    def detach(self) -> Prefix:
        return Prefix(self.kv.detach())


def sequence_positions(prompt) -> int:
    """How many positions a prompt adds to the sequence: ``p`` for a soft prompt ``[p, d]``,
    none for a prefix (keys and values only) or no prompt."""
    if prompt is None or isinstance(prompt, Prefix):
        return 0
    return int(prompt.shape[0])


def attention_dims(config) -> tuple[int, int, int]:
    """``(layers, kv_heads, head_dim)`` of a BERT / RoBERTa / GPT-2 / Llama config."""
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    if not layers or not heads:
        raise NeuronLensError(f"{type(config).__name__}: cannot read the attention dimensions")
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return int(layers), int(kv_heads), int(head_dim)


def prefix_cache(prefix: Prefix, config, batch: int) -> DynamicCache:
    """The prefix as a key/value cache for a batch of ``batch`` examples."""
    layers, kv_heads, head_dim = attention_dims(config)
    kv = prefix.kv
    if kv.dim() != 4 or kv.shape[:2] != (layers, 2) or kv.shape[3] != kv_heads * head_dim:
        raise ShapeMismatchError(
            f"a prefix for this model is [{layers}, 2, p, {kv_heads * head_dim}] (layers, key and "
            f"value, positions, kv heads x head dim), got {list(kv.shape)}"
        )
    p = kv.shape[2]
    cache = DynamicCache()
    for layer in range(layers):
        # [p, kv_heads * head_dim] -> [batch, kv_heads, p, head_dim]
        k, v = (
            kv[layer, i].view(p, kv_heads, head_dim).transpose(0, 1).unsqueeze(0)
            .expand(batch, -1, -1, -1)
            for i in (0, 1)
        )  # fmt: skip
        cache.update(k, v, layer)
    return cache


def input_positions(attention_mask: Tensor, family: str, config) -> Tensor:
    """``[B, L]`` the position ids the input has without a prefix (right padding); RoBERTa
    counts from ``padding_idx + 1`` and gives padding ``padding_idx``."""
    pos = (attention_mask.cumsum(1) - 1).clamp_min(0)
    if family == "roberta":
        pad = int(config.pad_token_id)
        return torch.where(attention_mask.bool(), pos + pad + 1, torch.full_like(pos, pad))
    return pos


T5_REASON = (
    "prefix tuning hands every attention layer extra keys and values as a cache, and T5's "
    "encoder takes none; use prompt tuning (or P-tuning) on T5"
)
