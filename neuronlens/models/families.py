"""The one table of FFN neuron sites, per model family.

Every architecture difference neuronlens needs is *declared* here, in one
:class:`Family` entry per family, and nowhere else:

* which Hugging Face classes belong to the family (and which LM-head class to
  instantiate when a checkpoint names only its base model, e.g. ``BertModel``);
* what kind of model it is (masked LM, encoder-decoder, causal LM);
* its stacks of blocks in the TransformerBridge (``blocks``, or ``encoder_blocks``
  and ``decoder_blocks`` for T5);
* whether its FFN is gated (``act(gate(x)) * up(x)``);
* where the FFN's linears sit in the *raw* Hugging Face module tree, which the
  parity tests and structured pruning use.

The neuron activation of a site is always the bridge hook ``{stack}.{layer}.mlp.hook_post``:
the FFN activation after the nonlinearity, i.e. the input of the FFN's second linear.

Registering another architecture the bridge supports::

    import neuronlens as nl
    nl.register_family(nl.Family(
        name="mistral",
        architectures=("MistralForCausalLM",),
        base_models={"MistralModel": "MistralForCausalLM"},
        kind=nl.ModelKind.CAUSAL_LM,
        stacks=(nl.Stack("blocks", "model.layers.{i}.mlp", ("gate_proj", "up_proj"), "down_proj"),),
        gated=True,
    ))
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from neuronlens.errors import UnsupportedModelError


class ModelKind(enum.StrEnum):
    """How a model can answer a classification prompt."""

    MASKED_LM = "masked_lm"
    """Encoder with a trained masked-LM head: verbalizer logits at the mask position."""
    ENCODER_DECODER = "encoder_decoder"
    """T5-style: verbalizer logits at the first decoder step."""
    CAUSAL_LM = "causal_lm"
    """Decoder-only: verbalizer logits for the next token after the input."""
    ENCODER = "encoder"
    """Encoder whose LM-head weights were missing (randomly initialised): linear head only."""


@dataclass(frozen=True)
class Stack:
    """One stack of transformer blocks and where its FFN linears live in raw HF.

    Attributes:
        bridge_name: attribute of the TransformerBridge holding the blocks
            (``blocks``, ``encoder_blocks``, ``decoder_blocks``).
        hf_ffn: dotted path template (``{i}`` = layer) of the FFN module in the raw HF model.
        hf_in: names (inside ``hf_ffn``) of the linears that produce the neurons: the first
            linear, or gate and up projections of a gated FFN (gate first).
        hf_out: name (inside ``hf_ffn``) of the second linear, whose input is the neuron activation.
    """

    bridge_name: str
    hf_ffn: str
    hf_in: tuple[str, ...]
    hf_out: str
    attention: Attention | str = "this family's head pruning is not in the table"
    """Where the self-attention's linears live, for pruning whole heads; or why heads of
    this family cannot be removed (they can still be scored and switched off)."""


@dataclass(frozen=True)
class Attention:
    """A block's self-attention in raw HF, for head pruning.

    Attributes:
        path: dotted path template (``{i}`` = layer) of the attention module.
        q, k, v: names (inside ``path``) of the query, key and value linears; the same name
            three times for a fused QKV linear (GPT-2's ``c_attn``: outputs ``[q | k | v]``).
        o: name of the output projection (its input is the heads' outputs, concatenated).
        counts: name of the submodule whose head-count attributes follow the head count
            (BERT's ``self``; ``""``: the attention module itself); None where the forward
            reshapes with ``-1`` heads and reads no count.
        count_attrs: the attributes set there: the number of heads, then the heads' width.
        shared_bias: the heads read a position bias computed once per stack for every head
            (T5): a pruned module keeps the original indices of its heads to read their
            columns.
    """

    path: str
    q: str
    k: str
    v: str
    o: str
    counts: str | None = None
    count_attrs: tuple[str, str] = ("num_attention_heads", "all_head_size")
    shared_bias: bool = False

    @property
    def fused(self) -> bool:
        """Whether q, k and v are one linear."""
        return self.q == self.k == self.v


@dataclass(frozen=True)
class Family:
    """A model family's entry in the neuron-site table."""

    name: str
    architectures: tuple[str, ...]
    """HF class names the bridge can wrap directly (with a head)."""
    kind: ModelKind
    stacks: tuple[Stack, ...]
    gated: bool = False
    base_models: dict[str, str] = field(default_factory=dict)
    """Headless HF class name -> class with a head to instantiate instead."""
    head_prefixes: tuple[str, ...] = ()
    """State-dict key prefixes of the LM head; missing ones mark the head as random."""
    gated_config: str | None = None
    """For families where gating depends on the config (T5 v1.1): config attribute to read."""
    gated_stacks: tuple[Stack, ...] = ()
    """The stacks to use instead when ``gated_config`` is true."""
    hf_head: str | None = None
    """Attribute of the HF model holding the LM head applied to the base model's last hidden
    state (``cls`` for BERT, ``lm_head`` ...). None: read logits from the full forward (T5)."""
    neuron_hook: str = "mlp.hook_post"
    """Bridge hook, relative to a block, whose output is the neuron activation."""

    def hook_name(self, stack: str, layer: int) -> str:
        return f"{stack}.{layer}.{self.neuron_hook}"

    def resolve(self, config: object) -> tuple[bool, tuple[Stack, ...]]:
        """Whether a model with this HF config has a gated FFN, and its stacks."""
        if self.gated_config and getattr(config, self.gated_config, False):
            return True, self.gated_stacks
        return self.gated, self.stacks


def _t5_stack(bridge_name: str, hf_stack: str, ffn_index: int, gated: bool) -> Stack:
    ins = ("wi_0", "wi_1") if gated else ("wi",)
    path = f"{hf_stack}.block.{{i}}.layer.{ffn_index}.DenseReluDense"
    attention = Attention(
        f"{hf_stack}.block.{{i}}.layer.0.SelfAttention",
        "q",
        "k",
        "v",
        "o",
        counts="",
        count_attrs=("n_heads", "inner_dim"),
        shared_bias=True,
    )
    return Stack(bridge_name, path, ins, "wo", attention)


def _bert_attention(base: str) -> Attention:
    return Attention(
        f"{base}.encoder.layer.{{i}}.attention",
        "self.query",
        "self.key",
        "self.value",
        "output.dense",
        counts="self",
    )


GPT2_ATTENTION = Attention(
    "transformer.h.{i}.attn",
    "c_attn",
    "c_attn",
    "c_attn",
    "c_proj",
    counts="",
    count_attrs=("num_heads", "split_size"),
)


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family, *, overwrite: bool = False) -> Family:
    """Add a family to the neuron-site table (used for every later :func:`load_model`)."""
    if family.name in _FAMILIES and not overwrite:
        raise UnsupportedModelError(
            f"a family named {family.name!r} is already registered; pass overwrite=True to replace it"
        )
    if not family.stacks:
        raise UnsupportedModelError(f"family {family.name!r} declares no stacks of blocks")
    _FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> Family:
    """Remove a family from the table (and return it)."""
    if name not in _FAMILIES:
        raise UnsupportedModelError(f"no family named {name!r}; registered: {sorted(_FAMILIES)}")
    return _FAMILIES.pop(name)


def families() -> dict[str, Family]:
    """The registered families, by name."""
    return dict(_FAMILIES)


def family_for_architecture(architecture: str) -> tuple[Family, str]:
    """The family of an HF class name, and the class (with a head) to instantiate.

    Raises:
        UnsupportedModelError: naming the supported families and how to register one.
    """
    for fam in _FAMILIES.values():
        if architecture in fam.architectures:
            return fam, architecture
        if architecture in fam.base_models:
            return fam, fam.base_models[architecture]
    supported = ", ".join(
        f"{f.name} ({', '.join(f.architectures + tuple(f.base_models))})"
        for f in _FAMILIES.values()
    )
    raise UnsupportedModelError(
        f"architecture {architecture!r} has no entry in the neuron-site table. "
        f"Supported families: {supported}. To add one the TransformerBridge supports, "
        "describe its stacks with neuronlens.Family and call neuronlens.register_family "
        "(see neuronlens.models.families)."
    )


def t5_stacks(gated: bool) -> tuple[Stack, ...]:
    """T5's encoder and decoder stacks (the FFN is layer[1] in the encoder, layer[2] in the decoder)."""
    return (
        _t5_stack("encoder_blocks", "encoder", 1, gated),
        _t5_stack("decoder_blocks", "decoder", 2, gated),
    )


register_family(
    Family(
        name="bert",
        architectures=("BertForMaskedLM",),
        base_models={"BertModel": "BertForMaskedLM", "BertForPreTraining": "BertForMaskedLM"},
        kind=ModelKind.MASKED_LM,
        stacks=(
            Stack(
                "blocks",
                "bert.encoder.layer.{i}",
                ("intermediate.dense",),
                "output.dense",
                _bert_attention("bert"),
            ),
        ),
        head_prefixes=("cls.",),
        hf_head="cls",
    )
)
register_family(
    Family(
        name="roberta",
        architectures=("RobertaForMaskedLM",),
        base_models={"RobertaModel": "RobertaForMaskedLM"},
        kind=ModelKind.MASKED_LM,
        stacks=(
            Stack(
                "blocks",
                "roberta.encoder.layer.{i}",
                ("intermediate.dense",),
                "output.dense",
                _bert_attention("roberta"),
            ),
        ),
        head_prefixes=("lm_head.",),
        hf_head="lm_head",
    )
)
register_family(
    Family(
        name="t5",
        architectures=("T5ForConditionalGeneration",),
        base_models={"T5Model": "T5ForConditionalGeneration"},
        kind=ModelKind.ENCODER_DECODER,
        stacks=t5_stacks(gated=False),
        gated_config="is_gated_act",
        gated_stacks=t5_stacks(gated=True),
    )
)
register_family(
    Family(
        name="gpt2",
        architectures=("GPT2LMHeadModel",),
        base_models={"GPT2Model": "GPT2LMHeadModel"},
        kind=ModelKind.CAUSAL_LM,
        stacks=(Stack("blocks", "transformer.h.{i}.mlp", ("c_fc",), "c_proj", GPT2_ATTENTION),),
        hf_head="lm_head",
    )
)
register_family(
    Family(
        name="llama",
        architectures=("LlamaForCausalLM",),
        base_models={"LlamaModel": "LlamaForCausalLM"},
        kind=ModelKind.CAUSAL_LM,
        stacks=(
            Stack(
                "blocks",
                "model.layers.{i}.mlp",
                ("gate_proj", "up_proj"),
                "down_proj",
                Attention("model.layers.{i}.self_attn", "q_proj", "k_proj", "v_proj", "o_proj"),
            ),
        ),
        gated=True,
        hf_head="lm_head",
    )
)
