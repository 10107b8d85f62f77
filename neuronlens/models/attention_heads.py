"""Attention modules that run with fewer heads than the config says (head-pruned models).

Two families need help beyond smaller q/k/v/o linears:

* **GPT-2**: TransformerLens' fused-QKV attention bridge splits ``c_attn`` and reshapes the
  heads with the model config's head count, shared by every layer. :func:`own_head_counts`
  is a context for booting: each attention bridge whose Hugging Face module reports fewer
  heads (``num_heads``) gets its own copy of the config with that count.
* **T5**: the first layer of each stack computes a relative position bias for every head
  and the later layers reuse it. :class:`HeadSubsetT5Attention` is a T5 attention that
  keeps the original heads' indices (``kept_heads``): it adds only their columns of the
  shared bias and passes the whole bias on. :func:`fix_bias_hooks` makes the bridge's
  attention-score hooks read the same columns.

And in every family, an attention output projection whose input features were pruned is a
:class:`GatherLinear`.
"""

from __future__ import annotations

import contextlib
import copy
import types

import torch
from torch import Tensor, nn


def _t5_attention():
    from transformers.models.t5.modeling_t5 import T5Attention

    return T5Attention


class _HeadSubset:
    """Mixin of :class:`HeadSubsetT5Attention` (built lazily, so importing this module
    does not import T5)."""

    kept_heads: Tensor

    def forward(
        self, hidden_states, mask=None, key_value_states=None, position_bias=None, cache=None,
        **kwargs,
    ):  # fmt: skip
        if position_bias is None and self.has_relative_attention_bias:
            q_len = hidden_states.shape[1]
            k_len = q_len if key_value_states is None else key_value_states.shape[1]
            past = cache.get_seq_length(self.layer_idx) if cache is not None else 0
            position_bias = self.compute_bias(
                q_len, k_len, device=hidden_states.device, past_seen_tokens=past
            )
        own = None if position_bias is None else position_bias[:, self.kept_heads]
        out, _, weights = super().forward(
            hidden_states,
            mask=mask,
            key_value_states=key_value_states,
            position_bias=own,
            cache=cache,
            **kwargs,
        )
        return out, position_bias, weights


_CLASS: type | None = None


def head_subset_t5_class() -> type:
    """``HeadSubsetT5Attention``: T5's attention with only the heads ``kept_heads`` (indices
    of the original heads, a buffer), reading their columns of the shared position bias."""
    global _CLASS
    if _CLASS is None:
        _CLASS = type("HeadSubsetT5Attention", (_HeadSubset, _t5_attention()), {})
    return _CLASS


def keep_t5_heads(module: torch.nn.Module, kept: Tensor) -> None:
    """Make a T5 attention module (in place) one that reads bias columns ``kept``."""
    cls = head_subset_t5_class()
    if not isinstance(module, cls):
        module.__class__ = cls
    kept = kept.long().to(next(module.parameters()).device)
    if "kept_heads" in module._buffers:
        module._buffers["kept_heads"] = kept
    else:
        module.register_buffer("kept_heads", kept)


def t5_kept_heads(module: torch.nn.Module, n_heads: int) -> Tensor:
    """The original-head indices a T5 attention module runs (all of them when unpruned)."""
    if isinstance(module, head_subset_t5_class()):
        return module.kept_heads.cpu()
    return torch.arange(n_heads)


@contextlib.contextmanager
def own_head_counts():
    """While booting: fused-QKV attention bridges whose HF module has fewer heads than the
    config get their own config copy (and QKV conversions) with that head count."""
    from transformer_lens.model_bridge.generalized_components.joint_qkv_attention import (
        JointQKVAttentionBridge as Joint,
    )

    original = Joint.set_original_component

    def set_original_component(self, component):
        n = getattr(component, "num_heads", None)
        cfg = self.config
        if isinstance(n, int) and cfg is not None and n != getattr(cfg, "n_heads", n):
            self.config = copy.copy(cfg)
            self.config.n_heads = n
            if getattr(cfg, "n_key_value_heads", None) == cfg.n_heads:
                self.config.n_key_value_heads = n
            rule = getattr(self, "qkv_conversion_rule", None)
            if rule is not None and hasattr(rule, "n_heads"):
                rule = copy.copy(rule)
                rule.n_heads = n
                self.qkv_conversion_rule = rule
                for name in ("q", "k", "v"):
                    getattr(self, name).hook_out.hook_conversion = rule
            # the default splitter is shared by the per-layer clones and reads `self.config`
            # of the template it was bound to
            if getattr(self.split_qkv_matrix, "__func__", None) is Joint._default_split_qkv_matrix:
                self.split_qkv_matrix = types.MethodType(Joint._default_split_qkv_matrix, self)
        original(self, component)

    Joint.set_original_component = set_original_component
    try:
        yield
    finally:
        Joint.set_original_component = original


def fix_bias_hooks(bridge: torch.nn.Module) -> None:
    """After booting: attention bridges wrapping a :class:`HeadSubsetT5Attention` rebuild
    their attention scores (``hook_attn_scores``) from the kept heads' bias columns."""
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    cls = head_subset_t5_class()

    def scores(self, qk_capture, position_bias, attn_weights):
        if isinstance(position_bias, Tensor) and position_bias.shape[1] != attn_weights.shape[1]:
            position_bias = position_bias[:, self.original_component.kept_heads]
        return AttentionBridge._reconstruct_bias_scores(
            self, qk_capture, position_bias, attn_weights
        )

    for module in bridge.modules():
        if isinstance(module, AttentionBridge) and isinstance(
            getattr(module, "original_component", None), cls
        ):
            module._reconstruct_bias_scores = types.MethodType(scores, module)


class GatherLinear(nn.Module):
    """The attention output projection with some input features removed: it reads only the
    features ``kept`` of its full-width input (the attention still computes every head at
    full width, so the input keeps its width; the removed features' weights are gone, and
    the result equals the full projection with those features zeroed).

    Attributes:
        in_features: the full input width (what the attention produces).
        out_features: the output width (``d_model``).
        kept: indices (into the full input) of the features read.
    """

    def __init__(self, in_features: int, kept: Tensor, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(weight.shape[0])
        self.register_buffer("kept", kept.long())
        self.weight = nn.Parameter(weight, requires_grad=False)  # [out, len(kept)]
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x.index_select(-1, self.kept), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, kept={self.kept.numel()}, out={self.out_features}"
