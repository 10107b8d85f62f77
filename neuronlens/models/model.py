"""The hooked model neuronlens works on: a TransformerBridge plus what it needs to know."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor
from transformers.pytorch_utils import Conv1D

from neuronlens.errors import (
    EmptyDataError,
    MissingLMHeadError,
    NeuronLensError,
    ShapeMismatchError,
    SiteError,
    TokenizerMismatchError,
    UnsupportedModelError,
)
from neuronlens.models.attention_heads import GatherLinear
from neuronlens.models.families import Family, ModelKind
from neuronlens.models.layout import Layout, Placement, make_layout, place_prompt
from neuronlens.models.placement import computing_in, devices_of, dtype_name
from neuronlens.models.prefix import T5_REASON, Prefix, input_positions, prefix_cache
from neuronlens.models.sites import Site, SiteSpec, module_kinds, resolve_site, resolve_sites


@dataclass
class Encoded:
    """A tokenised batch (right-padded), as the model's forward takes it.

    ``decoder_input_ids`` is set for encoder-decoder models (one decoder start token per row).
    """

    input_ids: Tensor
    attention_mask: Tensor
    token_type_ids: Tensor | None = None
    decoder_input_ids: Tensor | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str) -> Encoded:
        return replace(
            self,
            **{
                f.name: getattr(self, f.name).to(device)
                for f in fields(self)
                if getattr(self, f.name) is not None
            },
        )

    def __getitem__(self, rows: slice | Tensor | Sequence[int]) -> Encoded:
        """The given rows, trimmed to the longest remaining sequence."""
        sub = replace(
            self,
            **{
                f.name: getattr(self, f.name)[rows]
                for f in fields(self)
                if getattr(self, f.name) is not None
            },
        )
        length = int(sub.attention_mask.sum(1).max()) if len(sub) else 0
        return replace(
            sub,
            input_ids=sub.input_ids[:, :length],
            attention_mask=sub.attention_mask[:, :length],
            token_type_ids=None if sub.token_type_ids is None else sub.token_type_ids[:, :length],
        )


class NeuronModel:
    """A transformer wrapped as a TransformerBridge (default mode), with its neuron sites.

    Build one with :func:`neuronlens.load_model`. Attributes:

    * ``bridge``: the ``TransformerBridge`` (hook points, run_with_cache, ...);
    * ``tokenizer``: the model's own Hugging Face tokenizer (neuronlens encodes with it and
      passes tensors; the bridge keeps a separate copy that it may alter);
    * ``family``: the :class:`~neuronlens.models.families.Family` table entry;
    * ``kind``: how the model can answer (:class:`ModelKind`); a masked LM whose head
      weights were missing is ``ModelKind.ENCODER``;
    * ``sites``: one :class:`Site` per FFN, widths read from module shapes;
    * ``pruning``: ``None``, or on a pruned model its
      :class:`~neuronlens.pruning.PruningRecord` (what was kept).
    """

    def __init__(
        self,
        bridge: torch.nn.Module,
        tokenizer,
        family: Family,
        *,
        name: str,
        has_lm_head: bool,
        gated: bool,
        stacks,
    ) -> None:
        self.bridge = bridge
        self.tokenizer = tokenizer
        self.family = family
        self.name = name
        self.has_lm_head = has_lm_head
        self.gated = gated
        self.stacks = tuple(stacks)
        self.kind = family.kind if has_lm_head else ModelKind.ENCODER
        self.pruning = None  # a PruningRecord once pruned (neuronlens.pruning)
        self._active_layout: Layout | None = None
        self._check_tokenizer()

    # ------------------------------------------------------------------ structure
    @property
    def hf_model(self) -> torch.nn.Module:
        """The wrapped Hugging Face model (its submodules are bridge wrappers)."""
        return self.bridge.original_model

    @property
    def device(self) -> torch.device:
        return self.input_embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the model runs in (its embedding's)."""
        return self.input_embeddings.weight.dtype

    @property
    def devices(self) -> list[torch.device]:
        """Every device the weights live on (several under a ``device_map``); inputs go to
        :attr:`device`, the embedding's."""
        return devices_of(self.hf_model)

    def computing_in(self, dtype) -> contextlib.AbstractContextManager:
        """A block in which the model runs in ``dtype`` (e.g. ``"float32"`` for a bfloat16
        model on a CPU, whose bfloat16 backward is slow); the weights are cast back, exactly,
        when the block ends. ``None``: the model's own dtype. See ``compute_dtype=`` of
        :func:`~neuronlens.attribute` and :func:`~neuronlens.predictivity`."""
        return computing_in(self.hf_model, dtype)

    def _where(self) -> str:
        devs = self.devices
        return str(self.device) if len(devs) <= 1 else "[" + ", ".join(map(str, devs)) + "]"

    def require_weights(self) -> None:
        """Raise unless the model has weights to run (a ``device="meta"`` model has shapes
        only)."""
        if self.device.type == "meta":
            raise NeuronLensError(
                f"{self.name} was loaded with device='meta': it has shapes but no weights, so "
                "it cannot run. Load it on 'cpu' or 'cuda' to compute anything"
            )

    @property
    def input_embeddings(self) -> torch.nn.Embedding:
        emb = self.hf_model.get_input_embeddings()
        return getattr(emb, "original_component", emb)

    @property
    def d_model(self) -> int:
        return int(self.input_embeddings.weight.shape[1])

    @property
    def vocab_size(self) -> int:
        return int(self.input_embeddings.weight.shape[0])

    @property
    def sites(self) -> tuple[Site, ...]:
        """Every FFN site, in stack then layer order, with widths from module shapes."""
        out = []
        for stack in self.stacks:
            blocks = getattr(self.bridge, stack.bridge_name)
            for layer, block in enumerate(blocks):
                out.append(
                    Site(
                        stack=stack.bridge_name,
                        layer=layer,
                        hook_name=self.family.hook_name(stack.bridge_name, layer),
                        width=_ffn_width(block),
                    )
                )
        return tuple(out)

    @property
    def head_dim(self) -> int:
        """Width of one attention head (from the config: ``head_dim``, T5's ``d_kv``, or
        the model width over the number of heads)."""
        return config_head_dim(self.hf_model.config, self.name)

    def attention_sites(self, module: str = "heads") -> tuple[Site, ...]:
        """One site per attention block (T5's decoder: its self-attention), hooked at the
        input of the attention output projection: ``"heads"`` (units: whole heads) or
        ``"attn_out"`` (units: that projection's input features)."""
        if module not in ("heads", "attn_out"):
            raise SiteError(f"attention module kind must be 'heads' or 'attn_out', got {module!r}")
        group = self.head_dim if module == "heads" else 1
        out = []
        for stack in self.stacks:
            for layer, block in enumerate(getattr(self.bridge, stack.bridge_name)):
                attr = "attn" if hasattr(block, "attn") else "self_attn"
                features = _linear_in(_unwrap(getattr(block, attr).o))
                if features % group:
                    raise UnsupportedModelError(
                        f"{self.name}: {stack.bridge_name}.{layer}'s attention output has "
                        f"{features} inputs, not a multiple of the head width {group}"
                    )
                out.append(
                    Site(
                        stack=stack.bridge_name,
                        layer=layer,
                        hook_name=f"{stack.bridge_name}.{layer}.{attr}.o.hook_in",
                        width=features // group,
                        module=module,
                        group=group,
                    )
                )
        return tuple(out)

    def module_sites(self, modules: str | Sequence[str] = "ffn") -> tuple[Site, ...]:
        """The sites of ``modules``: ``"ffn"`` (the default everywhere), ``"heads"``,
        ``"attn_out"``, ``"all"`` (FFN and attention output inputs), or a list of kinds."""
        out: list[Site] = []
        for kind in module_kinds(modules):
            out.extend(self.sites if kind == "ffn" else self.attention_sites(kind))
        return tuple(out)

    @property
    def n_neurons(self) -> int:
        return sum(s.width for s in self.sites)

    def site(self, spec: SiteSpec) -> Site:
        """One site: ``model.site("blocks.3")``, ``model.site(3)``,
        ``model.site(("encoder_blocks", 3))``, ``model.site("blocks.3.heads")``."""
        return resolve_site(self._lookup(spec), spec)

    def select_sites(
        self,
        spec: SiteSpec | Iterable[SiteSpec] | None = None,
        modules: str | Sequence[str] = "ffn",
    ) -> list[Site]:
        """Several sites (``None``: every site of ``modules``, by default every FFN).

        Names of attention sites (``"blocks.3.heads"``, ``"blocks.3.attn_out"``) are found
        whatever ``modules`` says; layer indices and ``(stack, layer)`` mean FFNs.
        """
        if spec is None:
            return list(self.module_sites(modules))
        return resolve_sites(self._lookup(spec), spec)

    def _lookup(self, spec) -> tuple[Site, ...]:
        """The sites a spec may name: the FFNs, plus the attention sites a name asks for."""
        items = [spec] if isinstance(spec, (Site, str, int, tuple)) else list(spec)
        named = " ".join(i.name if isinstance(i, Site) else str(i) for i in items)
        extra = [k for k in ("heads", "attn_out") if f".{k}" in named]
        return self.sites + sum((self.attention_sites(k) for k in extra), ())

    def hf_ffn(self, site: Site) -> torch.nn.Module:
        """The raw HF FFN module of a site (unwrapped from the bridge)."""
        stack = next(s for s in self.stacks if s.bridge_name == site.stack)
        return walk_modules(self.hf_model, stack.hf_ffn.format(i=site.layer))

    def require_lm_head(self) -> None:
        """Raise :class:`MissingLMHeadError` unless the LM head holds trained weights."""
        if not self.has_lm_head:
            raise MissingLMHeadError(
                f"{self.name}: its LM-head weights were missing from the checkpoint and were "
                "randomly initialised, so verbalizer (label-word) logits would be noise. Use a "
                "linear head on the pooled hidden state instead, or load a checkpoint with an "
                "LM head."
            )

    # ------------------------------------------------------------------ running it
    def encode(
        self,
        texts: str | Sequence[str],
        texts_b: Sequence[str] | None = None,
        *,
        max_length: int | None = 512,
    ) -> Encoded:
        """Tokenise with the model's own tokenizer (right padding, truncation)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise EmptyDataError("no texts to encode: pass at least one string")
        if texts_b is not None and len(texts_b) != len(texts):
            raise ShapeMismatchError(
                f"texts ({len(texts)}) and texts_b ({len(texts_b)}) differ in length"
            )
        tok = self.tokenizer
        enc = tok(
            texts,
            list(texts_b) if texts_b is not None else None,
            padding=True,
            truncation=max_length is not None,
            max_length=max_length,
            return_tensors="pt",
        )
        ids = enc["input_ids"]
        if ids.numel() and int(ids.max()) >= self.vocab_size:
            raise TokenizerMismatchError(
                f"the tokenizer produced token id {int(ids.max())} but {self.name} has only "
                f"{self.vocab_size} embeddings: the tokenizer does not belong to this model"
            )
        dec = None
        if self.family.kind is ModelKind.ENCODER_DECODER:
            start = self.hf_model.config.decoder_start_token_id
            dec = torch.full((len(texts), 1), int(start or 0), dtype=torch.long)
        return Encoded(
            input_ids=ids,
            attention_mask=enc["attention_mask"],
            token_type_ids=enc.get("token_type_ids"),
            decoder_input_ids=dec,
        ).to(self.device)

    def layout(
        self, batch: Encoded, n_prompt: int = 0, placement: Placement | None = None
    ) -> Layout:
        """Where a soft prompt of ``n_prompt`` tokens and the answer sit in ``batch``'s full
        sequence, for a head's ``placement`` (default: prompt before the input, no answer)."""
        return make_layout(
            batch.input_ids,
            batch.attention_mask,
            n_prompt,
            placement,
            mask_token_id=self.tokenizer.mask_token_id,
            causal=self.family.kind is ModelKind.CAUSAL_LM,
        )

    @property
    def active_layout(self) -> Layout | None:
        """The :class:`Layout` of the forward pass running now (``None`` outside one): hooks
        read it to find the soft-prompt and answer positions of the current batch."""
        return self._active_layout

    @contextlib.contextmanager
    def _running(self, layout: Layout):
        before, self._active_layout = self._active_layout, layout
        try:
            yield
        finally:
            self._active_layout = before

    def embed(
        self, batch: Encoded, prompt: Tensor | None = None, placement: Placement | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Word embeddings of a batch with an optional soft prompt ``[p, d_model]``.

        The prompt goes before the input, or after each example's last token when
        ``placement.after_input``. Returns ``(inputs_embeds, attention_mask,
        token_type_ids)`` extended by the prompt; the model adds positions, token types and
        its embedding LayerNorm itself.
        """
        emb, mask, types, _ = self._inputs(batch, prompt, placement)
        return emb, mask, types

    def _inputs(
        self, batch: Encoded, prompt: Tensor | None, placement: Placement | None
    ) -> tuple[Tensor, Tensor, Tensor | None, Layout]:
        """``(inputs_embeds, attention_mask, token_type_ids, layout)`` with the prompt placed."""
        emb = self.input_embeddings(batch.input_ids)
        if isinstance(prompt, Prefix):  # keys and values only: the sequence is the input's
            layout = self.layout(batch, 0, placement)
            return emb, layout.attention_mask, batch.token_type_ids, layout
        if prompt is not None and prompt.dim() == 2 and prompt.shape[0] == 0:
            prompt = None  # an empty prompt (a head trained alone) adds nothing
        if prompt is not None and (prompt.dim() != 2 or prompt.shape[1] != self.d_model):
            raise ShapeMismatchError(
                f"a soft prompt must be [n_tokens, {self.d_model}] for {self.name}, "
                f"got {list(prompt.shape)}"
            )
        p = 0 if prompt is None else int(prompt.shape[0])
        layout = self.layout(batch, p, placement)
        types = batch.token_type_ids
        if p:
            rows = prompt.to(emb.dtype).unsqueeze(0).expand(emb.shape[0], -1, -1)
            emb = place_prompt(emb, rows, layout)
            if types is not None:
                types = place_prompt(types, types.new_zeros(len(batch), p), layout)
        return emb, layout.attention_mask, types, layout

    def forward(
        self,
        batch: Encoded,
        *,
        prompt: Tensor | None = None,
        placement: Placement | None = None,
        embeds_require_grad: bool = False,
    ) -> Tensor:
        """Logits of the bridge for a batch (masked LM / causal LM ``[B, L, V]``, T5 decoder ``[B, T, V]``).

        With ``prompt`` (``[p, d_model]``) the soft prompt is added in embedding space, before
        the input or where ``placement`` says. ``embeds_require_grad`` makes the input
        embeddings a leaf that requires grad, so a frozen model's activations get gradients.
        While it runs, :attr:`active_layout` says where the prompt and answer are.
        """
        if len(batch) == 0:
            raise EmptyDataError("empty batch: there is nothing to run")
        self.require_weights()
        if isinstance(prompt, Prefix):
            if self.family.kind is ModelKind.ENCODER_DECODER:
                raise NeuronLensError(f"{self.name}: {T5_REASON}")
            raise NeuronLensError(
                "a prefix runs through the base model (hidden_states, as the heads read it), "
                "not the full forward"
            )
        kwargs = {}
        if batch.decoder_input_ids is not None:
            kwargs["decoder_input_ids"] = batch.decoder_input_ids
        if prompt is None and not embeds_require_grad:
            x, types = batch.input_ids, batch.token_type_ids
            layout = self.layout(batch, 0, placement)
            mask = layout.attention_mask
        else:
            x, mask, types, layout = self._inputs(batch, prompt, placement)
            if embeds_require_grad and not x.requires_grad:
                x = x.detach().requires_grad_(True)
        if types is not None:
            kwargs["token_type_ids"] = types
        with self._running(layout):
            return self.bridge(x, attention_mask=mask, return_type="logits", **kwargs)

    __call__ = forward

    def hidden_states(
        self,
        batch: Encoded,
        *,
        prompt: Tensor | None = None,
        placement: Placement | None = None,
        embeds_require_grad: bool = False,
    ) -> tuple[Tensor, Layout]:
        """Last hidden state of the (encoder or decoder-only) base model, without the LM head.

        Returns ``(hidden [B, p + L, d_model], layout)``; ``layout.attention_mask`` is the
        full sequence's mask, ``layout.answer`` where ``placement`` reads the answer. Neuron
        hooks fire as in :meth:`forward`; the vocabulary projection is skipped, so heads that
        read one position (or pool) are cheaper this way. Encoder-decoder models return the
        encoder's.
        """
        if len(batch) == 0:
            raise EmptyDataError("empty batch: there is nothing to run")
        self.require_weights()
        emb, mask, types, layout = self._inputs(batch, prompt, placement)
        if embeds_require_grad:
            emb = emb.detach().requires_grad_(True)
        kwargs = {"inputs_embeds": emb, "attention_mask": mask}
        if types is not None:
            kwargs["token_type_ids"] = types
        if isinstance(prompt, Prefix):
            kwargs.update(self._prefix_kwargs(prompt, mask))
        base = self.hf_model.base_model
        if self.family.kind is ModelKind.ENCODER_DECODER:
            base = self.hf_model.get_encoder()
        with self._running(layout):
            out = base(**kwargs)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return hidden, layout

    def _prefix_kwargs(self, prefix: Prefix, mask: Tensor) -> dict:
        """The base model's extra arguments for a prefix: its keys and values as a cache,
        the attention mask extended over them, and the input's own positions."""
        if self.family.kind is ModelKind.ENCODER_DECODER:
            raise NeuronLensError(f"{self.name}: {T5_REASON}")
        config = self.hf_model.config
        b, p = mask.shape[0], prefix.n_tokens
        cache = prefix_cache(prefix.to(self.device, self.dtype), config, b)
        return {
            "past_key_values": cache,
            # transformers 5 hands the cache to attention as `cache=`, which the bridge's own
            # attention code (GPT-2, Llama) does not read; it reads `layer_past`, passed down
            # to every attention layer with the other keyword arguments: the same cache
            "layer_past": cache,
            "attention_mask": torch.cat([mask.new_ones(b, p), mask], 1),
            "position_ids": input_positions(mask, self.family.name, config),
        }

    def lm_logits(self, hidden: Tensor) -> Tensor:
        """Apply the LM head to hidden states ``[..., d_model]`` (masked and causal LMs)."""
        if self.family.hf_head is None:
            raise NeuronLensError(
                f"{self.family.name} reads label logits from the full forward, not from hidden states"
            )
        return getattr(self.hf_model, self.family.hf_head)(hidden)

    def hooks(self, fwd_hooks=(), bwd_hooks=()):
        """The bridge's hook context: hooks are removed on exit, also after an exception."""
        return self.bridge.hooks(fwd_hooks=list(fwd_hooks), bwd_hooks=list(bwd_hooks))

    def _check_tokenizer(self) -> None:
        if len(self.tokenizer) > self.vocab_size:
            raise TokenizerMismatchError(
                f"the tokenizer has {len(self.tokenizer)} tokens but {self.name} has only "
                f"{self.vocab_size} embeddings: pass the tokenizer that belongs to this model"
            )

    def __repr__(self) -> str:
        sites = self.sites
        stacks = ", ".join(
            f"{st.bridge_name}: {sum(s.stack == st.bridge_name for s in sites)} layers"
            for st in self.stacks
        )
        return (
            f"NeuronModel({self.name!r}, family={self.family.name}, kind={self.kind.value}, "
            f"{stacks}, {self.n_neurons} neurons, dtype={dtype_name(self.dtype)}, "
            f"device={self._where()})"
        )


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "original_component", None) or module


def config_head_dim(config, name: str = "the model") -> int:
    """Width of one attention head from an HF config: ``head_dim``, T5's ``d_kv``, or the
    hidden size over the number of heads."""
    for attr in ("head_dim", "d_kv"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    width = getattr(config, "hidden_size", None)
    for attr in ("num_attention_heads", "n_head", "num_heads"):
        heads = getattr(config, attr, None)
        if isinstance(heads, int) and heads > 0 and isinstance(width, int):
            return width // heads
    raise UnsupportedModelError(f"{name}: the config names no number of heads")


def walk_modules(root: torch.nn.Module, path: str) -> torch.nn.Module:
    """Follow a raw-HF dotted path in a booted model, stepping through bridge wrappers.

    The bridge replaces submodules by wrappers that keep the original module as
    ``original_component``; the path names the raw modules, so unwrap at every step.
    """
    module = _unwrap(root)
    for part in path.split("."):
        module = _unwrap(module)
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return _unwrap(module)


def _linear_in(module: torch.nn.Module) -> int:
    """Input features of an nn.Linear or GPT-2 Conv1D (a projection whose inputs were
    pruned: the full width it is given)."""
    if isinstance(module, GatherLinear):
        return module.in_features
    if isinstance(module, Conv1D):  # GPT-2 stores [in, out]
        return int(module.weight.shape[0])
    return int(module.weight.shape[1])


def _ffn_width(block: torch.nn.Module) -> int:
    """Number of neurons of a bridge block's FFN, read from its second linear's weight."""
    return _linear_in(_unwrap(block.mlp.out))
