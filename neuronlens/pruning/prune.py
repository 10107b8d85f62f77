"""Structured pruning of FFN neurons: remove them for real (saving: :mod:`.storage`).

Pruning a site keeps the rows ``M`` of the FFN's first linear(s) (weight and bias; gate and
up projections of a gated FFN) and the matching input columns of its second linear. The FFN's
output width (``d_model``) is unchanged, so a pruned model gives the same outputs as the
unpruned one with the removed neurons zeroed, only faster::

    top = scores.top(percent=60)                 # the neurons to keep
    small = prune_model(model, top)              # a new NeuronModel; `model` is untouched
    small.pruning.removed_ratio                  # 0.4
    save_pruned(small, "runs/bert-pruned")
    again = load_pruned("runs/bert-pruned")

Route: the booted model's Hugging Face modules are wrapped by the TransformerBridge, so
:func:`plain_hf_model` first rebuilds an unwrapped HF model of the same class from the config
and copies every parameter and buffer into it (cloned: the input model is never mutated).
The FFN linears of that copy are then replaced by smaller ``nn.Linear`` / ``Conv1D`` modules
(GPT-2's ``Conv1D`` stores its weight ``[in, out]``) and the result is booted as a new
:class:`NeuronModel`. Each layer may end up with a different width, so a plain HF config
cannot describe a pruned model: :func:`load_pruned` builds the model from its config, resizes
every FFN to the saved widths, then loads the weights.

A site may lose all its neurons (width 0): the FFN then outputs only its second linear's bias
(zero-size ``nn.Linear`` / ``Conv1D`` modules compute exactly that in torch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from neuronlens.errors import NeuronLensError, ShapeMismatchError, SiteError
from neuronlens.models.loading import load_model
from neuronlens.models.model import NeuronModel
from neuronlens.neurons import NeuronSet
from neuronlens.pruning.surgery import (
    attention_table,
    gather_inputs,
    plain_hf_model,
    set_config_width,
    slice_heads,
    slice_site,
)

KeepSpec = NeuronSet | Mapping[object, Tensor | Sequence[int] | np.ndarray]


# ---------------------------------------------------------------------- the record
@dataclass
class PruningRecord:
    """Which neurons a pruned model kept, in the *original* (unpruned) model's indices.

    Attributes:
        kept: site name -> sorted indices (into the original site) of the neurons kept.
            Every site of the model is listed, also the untouched ones.
        original_widths: site name -> width of the site before any pruning.
        source_model: name of the unpruned model.

    Pruning a pruned model again composes: indices stay those of the original model.
    """

    kept: dict[str, list[int]]
    original_widths: dict[str, int]
    source_model: str
    description: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, idx in self.kept.items():
            if name not in self.original_widths:
                raise NeuronLensError(f"pruning record lists site {name!r} without its width")
            width = self.original_widths[name]
            idx = [int(i) for i in idx]
            if any(i < 0 or i >= width for i in idx):
                raise ShapeMismatchError(
                    f"pruning record: a kept index of site {name} is outside 0..{width - 1}"
                )
            self.kept[name] = sorted(set(idx))
        missing = set(self.original_widths) - set(self.kept)
        if missing:
            raise NeuronLensError(f"pruning record has no kept indices for sites {sorted(missing)}")

    @property
    def widths(self) -> dict[str, int]:
        """Site name -> width after pruning."""
        return {k: len(v) for k, v in self.kept.items()}

    @property
    def n_original(self) -> int:
        """FFN neurons before pruning (attention sites, ``"*.heads"`` and ``"*.attn_out"``,
        are counted apart)."""
        return sum(w for k, w in self.original_widths.items() if not _is_attention(k))

    @property
    def n_kept(self) -> int:
        return sum(len(v) for k, v in self.kept.items() if not _is_attention(k))

    @property
    def kept_ratio(self) -> float:
        """Fraction of all FFN neurons kept (1.0 for a model with no neurons)."""
        return self.n_kept / self.n_original if self.n_original else 1.0

    @property
    def heads_kept_ratio(self) -> float:
        """Fraction of the attention heads kept (1.0 when no head was pruned)."""
        total = sum(w for k, w in self.original_widths.items() if _is_heads(k))
        kept = sum(len(v) for k, v in self.kept.items() if _is_heads(k))
        return kept / total if total else 1.0

    @property
    def attn_out_kept_ratio(self) -> float:
        """Fraction of the attention output projections' input features kept (1.0 when
        none was pruned)."""
        total = sum(w for k, w in self.original_widths.items() if _is_attn_out(k))
        kept = sum(len(v) for k, v in self.kept.items() if _is_attn_out(k))
        return kept / total if total else 1.0

    @property
    def removed_ratio(self) -> float:
        """Fraction of all FFN neurons removed."""
        return 1.0 - self.kept_ratio

    def removed(self) -> dict[str, list[int]]:
        """Site name -> original indices of the removed neurons."""
        out = {}
        for name, width in self.original_widths.items():
            keep = set(self.kept[name])
            out[name] = [i for i in range(width) if i not in keep]
        return out

    def kept_set(self) -> NeuronSet:
        """The kept neurons as a :class:`NeuronSet` of the original model."""
        return NeuronSet(
            {k: torch.tensor(v, dtype=torch.long) for k, v in self.kept.items()},
            dict(self.original_widths),
            f"kept by pruning of {self.source_model}",
        )

    def removed_set(self) -> NeuronSet:
        """The removed neurons as a :class:`NeuronSet` of the original model (e.g. to zero
        them in the unpruned model with ``Zero(record.removed_set())``)."""
        return NeuronSet(
            {k: torch.tensor(v, dtype=torch.long) for k, v in self.removed().items()},
            dict(self.original_widths),
            f"removed by pruning of {self.source_model}",
        )

    def to_dict(self) -> dict:
        return {
            "kept": {k: list(v) for k, v in self.kept.items()},
            "original_widths": dict(self.original_widths),
            "source_model": self.source_model,
            "description": self.description,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> PruningRecord:
        try:
            return cls(
                kept={str(k): [int(i) for i in v] for k, v in data["kept"].items()},
                original_widths={str(k): int(v) for k, v in data["original_widths"].items()},
                source_model=str(data["source_model"]),
                description=str(data.get("description", "")),
                meta=dict(data.get("meta", {})),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            if isinstance(e, NeuronLensError):
                raise
            raise NeuronLensError(f"not a valid pruning record ({type(e).__name__}: {e})") from e

    def __repr__(self) -> str:
        return (
            f"PruningRecord({self.source_model!r}: kept {self.n_kept}/{self.n_original} neurons, "
            f"{100 * self.removed_ratio:.1f}% removed over {len(self.kept)} sites)"
        )


def _is_heads(site_name: str) -> bool:
    return site_name.endswith(".heads")


def _is_attn_out(site_name: str) -> bool:
    return site_name.endswith(".attn_out")


def _is_attention(site_name: str) -> bool:
    return _is_heads(site_name) or _is_attn_out(site_name)


# ---------------------------------------------------------------------- pruning
def prune_model(
    model: NeuronModel,
    keep: KeepSpec | None = None,
    *,
    remove: KeepSpec | None = None,
    name: str | None = None,
    description: str = "",
) -> NeuronModel:
    """A new, smaller model with only the kept FFN neurons (the input model is unchanged),
    and only the kept attention heads where ``keep`` names head sites (``"blocks.3.heads"``,
    e.g. from ``attribute(..., modules="heads").top(...)``; every family, each layer with
    its own heads), and only the kept inputs of the attention output projection where it
    names ``"*.attn_out"`` sites (``modules="attn_out"`` or ``"all"``): the projection then
    reads only those features of the attention's full-width output, as the papers' pruned
    linears do, so these sites keep their width (indices stay the original ones) and the
    removed features read as zero. One layer cannot lose both heads and single features.

    Args:
        model: the model to prune (may itself be a pruned model; records compose).
        keep: the neurons to KEEP, as a :class:`NeuronSet` of this model (e.g.
            ``scores.top(percent=60)``) or a mapping site -> indices (a site name such as
            ``"blocks.3"``, a :class:`Site`, a layer index or ``(stack, layer)``; indices as a
            tensor, list or array, or a ``[width]`` bool mask). With a NeuronSet, a site the
            set covers (in its ``widths``) but holds no neurons of loses all its neurons; with
            a mapping, sites not named keep all theirs.
        remove: alternatively, the neurons to REMOVE (same forms; give exactly one of them).
        name: the pruned model's name (default: the input model's name, so prompts tuned on
            it can be evaluated and re-tuned on the pruned model).
        description: free text stored in the pruning record.

    Returns:
        a :class:`NeuronModel` whose ``pruning`` attribute is a :class:`PruningRecord`.

    Raises:
        SiteError: a site the model does not have.
        ShapeMismatchError: an index out of range, or a NeuronSet built for other widths.
        NeuronLensError: neither or both of keep / remove, or a wrong type.

    Examples:
        >>> small = prune_model(model, attr.top(percent=50))  # doctest: +SKIP
        >>> small.pruning.kept_ratio  # doctest: +SKIP
    """
    if (keep is None) == (remove is None):
        raise NeuronLensError("give exactly one of keep= (neurons to keep) or remove=")
    spec, removing = (keep, False) if remove is None else (remove, True)
    chosen = _normalise(model, spec, "remove" if removing else "keep")
    sites = {s.name: s for s in prunable_sites(model)}
    keep_idx: dict[str, Tensor] = {}
    for site_name, idx in chosen.items():
        if removing:
            mask = torch.ones(sites[site_name].width, dtype=torch.bool)
            mask[idx] = False
            idx = mask.nonzero().flatten()
        keep_idx[site_name] = idx
    _check_layers(model, keep_idx, sites)
    record = _composed_record(model, keep_idx, description)
    hf = _sliced_copy(model, sites, keep_idx, record)
    with torch.no_grad():
        pruned = load_model(
            hf,
            model.tokenizer,
            device=model.device,
            name=name or model.name,
            has_lm_head=model.has_lm_head,
        )
    pruned.pruning = record
    return pruned


def _sliced_copy(model: NeuronModel, sites: dict, keep_idx: dict[str, Tensor], record):
    """A plain HF copy of ``model`` with only the kept units of every chosen site."""
    hf = plain_hf_model(model)
    stacks = {st.bridge_name: st for st in model.stacks}
    for site_name, idx in keep_idx.items():
        site = sites[site_name]
        if site.module == "attn_out":
            kept = torch.tensor(record.kept[site_name], dtype=torch.long)
            if kept.numel() < site.width:
                gather_inputs(hf, stacks[site.stack], site.layer, kept)
        elif site.module == "heads":
            if idx.numel() == 0:
                raise NeuronLensError(
                    f"{site_name}: pruning would remove every head of the layer; keep at least one"
                )
            slice_heads(hf, stacks[site.stack], site.layer, idx, model.head_dim)
        else:
            slice_site(hf, stacks[site.stack], site.layer, idx.to(model.device))
    set_config_width(hf.config, {k: v for k, v in record.widths.items() if k in _ffn_names(model)})
    return hf


def prunable_sites(model: NeuronModel) -> tuple:
    """The FFN sites, and the whole-head and attention-output sites of stacks whose
    attention is in the family table."""
    if all(isinstance(st.attention, str) for st in model.stacks):
        return model.sites
    heads = [s for s in model.attention_sites("heads") if _removable(model, s)]
    outs = [s for s in model.attention_sites("attn_out") if _removable(model, s)]
    return model.sites + tuple(heads) + tuple(outs)


def _removable(model: NeuronModel, site) -> bool:
    stack = next(st for st in model.stacks if st.bridge_name == site.stack)
    return not isinstance(stack.attention, str)


def _ffn_names(model: NeuronModel) -> set[str]:
    return {s.name for s in model.sites}


def _composed_record(
    model: NeuronModel, keep_idx: dict[str, Tensor], description: str
) -> PruningRecord:
    """The record after keeping ``keep_idx`` (indices into the current widths), composed
    with the model's own record when it was pruned before. Head sites are listed once
    heads were pruned (now or before), attention-output sites likewise. An attention
    output keeps its width when features are removed, so its indices stay the original
    ones and keeping composes as an intersection."""
    prev: PruningRecord | None = getattr(model, "pruning", None)
    named = [*keep_idx, *(prev.kept if prev else ())]
    sites = {s.name: s for s in model.sites}
    if any(_is_heads(k) for k in named):
        sites |= {s.name: s for s in model.attention_sites("heads") if _removable(model, s)}
    if any(_is_attn_out(k) for k in named):
        sites |= {s.name: s for s in model.attention_sites("attn_out") if _removable(model, s)}
    if prev is not None and not set(prev.kept) <= set(sites):
        raise NeuronLensError(
            f"{model.name}: its pruning record names sites {sorted(set(prev.kept) - set(sites))} "
            "that the model does not have"
        )
    kept: dict[str, list[int]] = {}
    original: dict[str, int] = {}
    for site_name, site in sites.items():
        heads_name = site_name.removesuffix(".attn_out") + ".heads"
        if _is_attn_out(site_name) and len(kept.get(heads_name, ())) < original.get(heads_name, 0):
            dh = model.head_dim  # a layer that lost heads reads exactly their features
            kept[site_name] = [h * dh + j for h in kept[heads_name] for j in range(dh)]
            original[site_name] = original[heads_name] * dh
            continue
        if prev is not None and site_name in prev.kept:
            current, original[site_name] = prev.kept[site_name], prev.original_widths[site_name]
        else:
            current, original[site_name] = list(range(site.width)), site.width
        if _is_attn_out(site_name):
            if site_name not in keep_idx:
                kept[site_name] = list(current)
            elif len(current) == site.width:  # positions are those of `current`
                kept[site_name] = [current[int(i)] for i in keep_idx[site_name]]
            else:  # features removed before: the width stayed, positions are original
                chosen = {int(i) for i in keep_idx[site_name]}
                kept[site_name] = [i for i in current if i in chosen]
            continue
        if len(current) != site.width:
            raise ShapeMismatchError(
                f"{model.name}: site {site_name} has {site.width} neurons but its pruning record "
                f"kept {len(current)}"
            )
        if site_name in keep_idx:
            kept[site_name] = [current[int(i)] for i in keep_idx[site_name]]
        else:
            kept[site_name] = list(current)
    return PruningRecord(
        kept=kept,
        original_widths=original,
        source_model=prev.source_model if prev else model.name,
        description=description or (prev.description if prev else ""),
    )


def _check_layers(model: NeuronModel, keep_idx: dict[str, Tensor], sites: dict) -> None:
    """Refuse removing heads and single attention-output features of the same layer (the
    output projection's inputs are either whole heads or features of full-width heads)."""
    prev: PruningRecord | None = getattr(model, "pruning", None)

    def cut(name: str) -> bool:
        now = name in keep_idx and int(keep_idx[name].numel()) < sites[name].width
        if prev is None or name not in prev.kept:
            return now
        # heads shrink their site; an attention output keeps its width (a head-pruned
        # layer's lists exactly its heads' features, all of them still read)
        full = prev.original_widths[name] if _is_heads(name) else sites[name].width
        return now or len(prev.kept[name]) < full

    for name in sites:
        if _is_heads(name) and cut(name):
            other = name.removesuffix(".heads") + ".attn_out"
            if other in sites and cut(other):
                raise NeuronLensError(
                    f"{name.removesuffix('.heads')}: cannot remove both whole heads and single "
                    "attention-output features of one layer; prune one kind there"
                )


def _normalise(model: NeuronModel, spec: object, what: str) -> dict[str, Tensor]:
    """site name -> sorted unique LongTensor indices (validated against current widths)."""
    sites = {s.name: s for s in prunable_sites(model)}
    out: dict[str, Tensor] = {}
    if isinstance(spec, NeuronSet):
        for site_name, width in spec.widths.items():
            if site_name not in sites and site_name.endswith((".heads", ".attn_out")):
                _unprunable(model, model.site(site_name))
            if site_name not in sites:
                raise SiteError(
                    f"the neuron set to {what} names site {site_name!r}, which {model.name} does "
                    f"not have; its sites: {', '.join(sites)}"
                )
            if width != sites[site_name].width:
                raise ShapeMismatchError(
                    f"the neuron set to {what} was built for site {site_name} with {width} "
                    f"neurons, but {model.name} has {sites[site_name].width} there (a set of the "
                    "unpruned model cannot index a pruned one: map it through model.pruning)"
                )
            idx = spec.indices.get(site_name, torch.zeros(0, dtype=torch.long))
            out[site_name] = _indices(idx, width, site_name, what)
        return out
    if not isinstance(spec, Mapping):
        raise NeuronLensError(
            f"{what}= must be a NeuronSet or a mapping site -> neuron indices, "
            f"got {type(spec).__name__}"
        )
    for key, idx in spec.items():
        site = model.site(key)  # SiteError for anything the model does not have
        if site.name not in sites:
            _unprunable(model, site)
        if site.name in out:
            raise NeuronLensError(f"site {site.name} is given twice in {what}=")
        out[site.name] = _indices(idx, site.width, site.name, what)
    return out


def _unprunable(model: NeuronModel, site) -> None:
    """Raise why an attention site cannot be pruned."""
    stack = next(st for st in model.stacks if st.bridge_name == site.stack)
    attention_table(stack, "prune")


def _indices(idx: object, width: int, site: str, what: str) -> Tensor:
    if isinstance(idx, np.ndarray):
        idx = torch.from_numpy(idx)
    elif isinstance(idx, (list, tuple, range)):
        if any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) for i in idx):
            raise NeuronLensError(f"{what}= indices of site {site} must be integers, got {idx!r}")
        idx = torch.tensor(list(idx), dtype=torch.long)
    if not isinstance(idx, Tensor):
        raise NeuronLensError(
            f"{what}= indices of site {site} must be a tensor, list or array of integers, "
            f"got {type(idx).__name__}"
        )
    if idx.dtype == torch.bool:
        if idx.shape != (width,):
            raise ShapeMismatchError(
                f"a bool mask for site {site} must have shape [{width}], got {list(idx.shape)}"
            )
        idx = idx.nonzero().flatten()
    if idx.is_floating_point() or idx.is_complex():
        raise NeuronLensError(f"{what}= indices of site {site} must be integers, got {idx.dtype}")
    if idx.dim() != 1:
        raise ShapeMismatchError(
            f"{what}= indices of site {site} must be 1-D, got shape {list(idx.shape)}"
        )
    idx = idx.long().cpu()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= width):
        raise ShapeMismatchError(
            f"{what}= index out of range for site {site}: indices must be within 0..{width - 1}"
        )
    return torch.unique(idx)
