"""The direct logit effect of a neuron: the output tokens its write-out vector promotes.

A neuron ``i`` of an FFN writes ``a_i * w_i`` into the residual stream, where ``w_i`` is the
``i``-th input column of the FFN's second linear. Read straight through the final norm's
scale and the unembedding ``W_U``,

    effect = W_U (gamma * center(w_i)) * s

gives, per vocabulary token, how much one unit of the neuron's activation raises that
token's logit. ``gamma`` is the final norm's weight; ``center`` subtracts the mean for a
LayerNorm (GPT-2), which is linear, and is the identity for an RMSNorm (Llama, T5); ``s`` is
T5's ``d_model ** -0.5`` output scaling where the config applies it.

What it ignores: every later layer (attention and FFNs that read the neuron's output and
write their own), and the norm's division by the residual's size, which depends on the
input. It is the first-order, input-independent part of what the neuron writes: a reading
aid, not the neuron's total effect (measure that with :func:`~neuronlens.evaluate` and
:class:`~neuronlens.Zero`).

Defined where the unembedding follows the final norm: causal LMs (GPT-2, Llama) and T5's
decoder. A masked-LM head (BERT, RoBERTa) transforms the state first (dense, GELU,
LayerNorm), and T5's encoder writes into no unembedded stream: both are errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

import neuronlens.checks as checks
from neuronlens.errors import MissingLMHeadError, NeuronLensError
from neuronlens.models.families import ModelKind
from neuronlens.models.model import NeuronModel
from neuronlens.models.sites import Site
from neuronlens.neurons import NeuronSet
from neuronlens.pruning.surgery import get_module, is_conv1d


@dataclass
class LogitEffect:
    """The tokens a neuron's write-out vector promotes and suppresses most (direct path).

    ``promoted`` / ``suppressed``: ``(token, logit change per unit activation)``, strongest
    first; ``token_ids`` the same tokens' ids."""

    site: str
    neuron: int
    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]
    promoted_ids: list[int]
    suppressed_ids: list[int]


def _final_norm(model: NeuronModel, site: Site) -> torch.nn.Module:
    """The raw HF final norm (unwrapped from the bridge) the unembedding reads."""
    hf = model.hf_model
    if model.family.kind is ModelKind.ENCODER_DECODER:
        if site.stack != "decoder_blocks":
            raise NeuronLensError(
                f"{site.name} is an encoder site: the encoder's output is read by the decoder's "
                "cross-attention, not by the unembedding, so it has no direct logit effect; "
                "pick a decoder site"
            )
        return get_module(hf, "decoder.final_layer_norm")
    if model.family.kind is not ModelKind.CAUSAL_LM:
        raise NeuronLensError(
            f"{model.name}: its LM head transforms the hidden state (dense, activation, "
            "LayerNorm) before the unembedding, so a neuron has no direct logit effect; it is "
            "defined for causal LMs (GPT-2, Llama) and T5's decoder"
        )
    base = hf.base_model
    for name in ("norm", "ln_f", "final_layer_norm"):
        if hasattr(base, name):
            return get_module(base, name)
    raise NeuronLensError(f"{model.name}: no final norm found on {type(base).__name__}")


def _write_vector(model: NeuronModel, site: Site, neuron: int) -> Tensor:
    """Column ``neuron`` of the FFN's second linear (what one unit of activation writes)."""
    stack = next(s for s in model.stacks if s.bridge_name == site.stack)
    out = get_module(model.hf_ffn(site), stack.hf_out)
    if is_conv1d(out):
        return out.weight[neuron, :]
    if isinstance(out, torch.nn.Linear):
        return out.weight[:, neuron]
    raise NeuronLensError(f"{site.name}: the FFN's second linear is a {type(out).__name__}; "
                          "the logit effect reads nn.Linear or Conv1D weights")  # fmt: skip


def logit_vector(model: NeuronModel, site, neuron: int) -> Tensor:
    """``[vocab]`` float32: the direct logit effect of one unit of ``neuron``'s activation
    at ``site`` on every output token (see the module docstring)."""
    model.require_weights()
    if not model.has_lm_head:
        raise MissingLMHeadError(
            f"{model.name}: its LM head was not in the checkpoint (randomly drawn), so a logit "
            "effect would be noise"
        )
    s = model.select_sites([site])[0]
    if s.module != "ffn":
        raise NeuronLensError(f"{s.name}: the logit effect is defined for FFN neurons")
    checks.integer("neuron", neuron, minimum=0)
    if neuron >= s.width:
        raise NeuronLensError(f"neuron {neuron} is out of range for {s.name} (width {s.width})")
    norm = _final_norm(model, s)
    with torch.no_grad():
        w = _write_vector(model, s, neuron).float()
        if isinstance(norm, torch.nn.LayerNorm):
            w = w - w.mean()
        w = w * norm.weight.float().to(w.device)
        if getattr(model.hf_model.config, "scale_decoder_outputs", False):
            w = w * model.hf_model.config.d_model**-0.5
        unembed = model.hf_model.get_output_embeddings().weight
        return (unembed.float() @ w.to(unembed.device)).cpu()


def logit_effect(model: NeuronModel, site, neuron: int, k: int = 10) -> LogitEffect:
    """The ``k`` output tokens ``neuron`` at ``site`` promotes and suppresses most, by its
    direct logit effect (the module docstring says what that ignores).

    Examples:
        >>> eff = logit_effect(model, "blocks.5", 123)  # doctest: +SKIP
        >>> eff.promoted[:3]                            # doctest: +SKIP
    """
    checks.integer("k", k, minimum=1)
    vec = logit_vector(model, site, neuron)
    k = min(k, vec.numel())
    up, down = torch.topk(vec, k), torch.topk(-vec, k)
    tok = model.tokenizer

    def named(ids: Tensor, vals: Tensor) -> list[tuple[str, float]]:
        return [
            (tok.convert_tokens_to_string([tok.convert_ids_to_tokens(int(i))]), float(v))
            for i, v in zip(ids, vals, strict=True)
        ]

    return LogitEffect(
        site=model.select_sites([site])[0].name,
        neuron=int(neuron),
        promoted=named(up.indices, up.values),
        suppressed=named(down.indices, -down.values),
        promoted_ids=up.indices.tolist(),
        suppressed_ids=down.indices.tolist(),
    )


def logit_effects(model: NeuronModel, neurons: NeuronSet, k: int = 10) -> list[LogitEffect]:
    """:func:`logit_effect` of every neuron of a set, site by site."""
    return [
        logit_effect(model, site, int(i), k)
        for site, idx in neurons.indices.items()
        for i in idx.tolist()
    ]
