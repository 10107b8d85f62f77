"""Structured pruning of FFN neurons: remove them for real, save and load pruned models.

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

import contextlib
import copy
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from neuronlens.errors import (
    DataFileNotFoundError,
    NeuronLensError,
    ShapeMismatchError,
    SiteError,
    UnsupportedModelError,
)
from neuronlens.io import library_versions
from neuronlens.models.families import Stack, family_for_architecture
from neuronlens.models.loading import load_model, quiet_transformers
from neuronlens.models.model import NeuronModel, walk_modules
from neuronlens.neurons import NeuronSet

RECORD_FILE = "pruning.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "neuronlens-pruned-model"
FORMAT_VERSION = 1
INTERMEDIATE_ATTRS = ("intermediate_size", "d_ff", "n_inner")
"""HF config attributes holding the FFN width (BERT/RoBERTa/Llama, T5, GPT-2)."""

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
        return sum(self.original_widths.values())

    @property
    def n_kept(self) -> int:
        return sum(len(v) for v in self.kept.values())

    @property
    def kept_ratio(self) -> float:
        """Fraction of all FFN neurons kept (1.0 for a model with no neurons)."""
        return self.n_kept / self.n_original if self.n_original else 1.0

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


# ---------------------------------------------------------------------- pruning
def prune_model(
    model: NeuronModel,
    keep: KeepSpec | None = None,
    *,
    remove: KeepSpec | None = None,
    name: str | None = None,
    description: str = "",
) -> NeuronModel:
    """A new, smaller model with only the kept FFN neurons (the input model is unchanged).

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
    """
    if (keep is None) == (remove is None):
        raise NeuronLensError("give exactly one of keep= (neurons to keep) or remove=")
    spec, removing = (keep, False) if remove is None else (remove, True)
    chosen = _normalise(model, spec, "remove" if removing else "keep")
    sites = {s.name: s for s in model.sites}
    keep_idx: dict[str, Tensor] = {}
    for site_name, idx in chosen.items():
        width = sites[site_name].width
        if removing:
            mask = torch.ones(width, dtype=torch.bool)
            mask[idx] = False
            idx = mask.nonzero().flatten()
        keep_idx[site_name] = idx

    prev: PruningRecord | None = getattr(model, "pruning", None)
    if prev is not None and set(prev.kept) != set(sites):
        raise NeuronLensError(
            f"{model.name}: its pruning record names sites {sorted(prev.kept)} but the model has "
            f"{sorted(sites)}"
        )
    kept: dict[str, list[int]] = {}
    for site_name, site in sites.items():
        current = prev.kept[site_name] if prev is not None else list(range(site.width))
        if len(current) != site.width:
            raise ShapeMismatchError(
                f"{model.name}: site {site_name} has {site.width} neurons but its pruning record "
                f"kept {len(current)}"
            )
        if site_name in keep_idx:
            kept[site_name] = [current[int(i)] for i in keep_idx[site_name]]
        else:
            kept[site_name] = list(current)
    record = PruningRecord(
        kept=kept,
        original_widths=(
            dict(prev.original_widths) if prev else {k: s.width for k, s in sites.items()}
        ),
        source_model=prev.source_model if prev else model.name,
        description=description or (prev.description if prev else ""),
    )

    hf = plain_hf_model(model)
    stacks = {st.bridge_name: st for st in model.stacks}
    for site_name, idx in keep_idx.items():
        site = sites[site_name]
        _slice_site(hf, stacks[site.stack], site.layer, idx.to(model.device))
    _set_config_width(hf.config, record.widths)
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


def _normalise(model: NeuronModel, spec: object, what: str) -> dict[str, Tensor]:
    """site name -> sorted unique LongTensor indices (validated against current widths)."""
    sites = {s.name: s for s in model.sites}
    out: dict[str, Tensor] = {}
    if isinstance(spec, NeuronSet):
        for site_name, width in spec.widths.items():
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
        if site.name in out:
            raise NeuronLensError(f"site {site.name} is given twice in {what}=")
        out[site.name] = _indices(idx, site.width, site.name, what)
    return out


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


# ---------------------------------------------------------------------- plain HF copies
def plain_hf_model(model: NeuronModel) -> transformers.PreTrainedModel:
    """An unwrapped Hugging Face copy of the model (same class, cloned weights, eval mode).

    The booted model's submodules are bridge wrappers; this builds a fresh model of the same
    class from the config, gives its FFNs the model's current widths, and copies every
    parameter and buffer (cloned, so the copy shares no storage with ``model``).
    """
    src = model.hf_model
    config = copy.deepcopy(src.config)
    with _no_init(), quiet_transformers():
        fresh = type(src)(config)
    stacks = {st.bridge_name: st for st in model.stacks}
    for site in model.sites:
        _resize_site(fresh, stacks[site.stack], site.layer, site.width)
    with torch.no_grad():
        for name, tensor in _named_tensors(fresh):
            owner_path, _, attr = name.rpartition(".")
            owner = walk_modules(fresh, owner_path) if owner_path else fresh
            source = getattr(walk_modules(src, owner_path) if owner_path else src, attr)
            if source.shape != tensor.shape:
                raise ShapeMismatchError(
                    f"{model.name}: {name} has shape {list(source.shape)} in the model but "
                    f"{list(tensor.shape)} in its rebuilt copy"
                )
            if isinstance(tensor, nn.Parameter):
                tensor.data = source.detach().clone()  # keeps tied parameters tied
            else:
                owner._buffers[attr] = source.detach().clone()
    fresh.eval()
    fresh.requires_grad_(False)
    return fresh


def _named_tensors(module: nn.Module):
    yield from module.named_parameters(remove_duplicate=False)
    yield from module.named_buffers(remove_duplicate=False)


@contextlib.contextmanager
def _no_init():
    """Skip random weight init while building a model whose weights are overwritten anyway."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            no_init_weights = contextlib.nullcontext
    with no_init_weights():
        yield


def _get(root: nn.Module, dotted: str) -> nn.Module:
    return walk_modules(root, dotted)


def _set(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_path, _, attr = dotted.rpartition(".")
    parent = walk_modules(root, parent_path) if parent_path else root
    setattr(parent, attr, module)


def _is_conv1d(module: nn.Module) -> bool:
    return isinstance(module, Conv1D)


class _NoInputConv1D(Conv1D):
    """GPT-2's Conv1D for a second linear whose every input neuron was pruned: HF's
    ``x.view(-1, 0)`` fails on empty inputs, so this returns the bias at every position."""

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != 0:
            return super().forward(x)
        return self.bias.to(x.dtype).expand(*x.shape[:-1], self.nf).clone()


def _check_linear(module: nn.Module, where: str) -> None:
    if not (isinstance(module, nn.Linear) or _is_conv1d(module)):
        raise UnsupportedModelError(
            f"cannot prune {where}: it is a {type(module).__name__}, not nn.Linear or Conv1D"
        )


def _linear_like(
    like: nn.Module, in_features: int, out_features: int, weight: Tensor | None, bias
) -> nn.Module:
    """A new module of ``like``'s kind (nn.Linear or GPT-2 Conv1D) with the given weights.

    ``weight`` is given in the module's own layout (``[out, in]`` Linear, ``[in, out]`` Conv1D);
    None leaves it uninitialised (``bias``: a tensor, None for none, or True for uninitialised).
    """
    w0 = like.weight
    has_bias = bias is not None
    if _is_conv1d(like):
        cls = _NoInputConv1D if in_features == 0 else Conv1D
        with warnings.catch_warnings(), torch.device("meta"):  # zero-size init warns "no-op"
            warnings.simplefilter("ignore")
            new = cls(out_features, in_features)
        new.weight = nn.Parameter(
            torch.empty(in_features, out_features, dtype=w0.dtype, device=w0.device)
            if weight is None
            else weight,
            requires_grad=False,
        )
        if not has_bias:
            new.bias = None
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            new = nn.Linear(in_features, out_features, bias=has_bias, device="meta")
        new.weight = nn.Parameter(
            torch.empty(out_features, in_features, dtype=w0.dtype, device=w0.device)
            if weight is None
            else weight,
            requires_grad=False,
        )
    if has_bias:
        new.bias = nn.Parameter(
            torch.empty(out_features, dtype=w0.dtype, device=w0.device) if bias is True else bias,
            requires_grad=False,
        )
    new.train(like.training)
    return new


def _dims(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or Conv1D."""
    if _is_conv1d(module):
        return int(module.weight.shape[0]), int(module.weight.shape[1])
    return int(module.weight.shape[1]), int(module.weight.shape[0])


def _slice_site(hf: nn.Module, stack: Stack, layer: int, idx: Tensor) -> None:
    """Keep neurons ``idx`` of one FFN of a plain HF model (in place)."""
    ffn = _get(hf, stack.hf_ffn.format(i=layer))
    where = f"{stack.hf_ffn.format(i=layer)}"
    k = int(idx.numel())
    for name in stack.hf_in:
        lin = _get(ffn, name)
        _check_linear(lin, f"{where}.{name}")
        d_in, _ = _dims(lin)
        w = lin.weight.detach()
        w = w[:, idx].clone() if _is_conv1d(lin) else w[idx].clone()
        b = None if lin.bias is None else lin.bias.detach()[idx].clone()
        _set(ffn, name, _linear_like(lin, d_in, k, w, b))
    out = _get(ffn, stack.hf_out)
    _check_linear(out, f"{where}.{stack.hf_out}")
    _, d_out = _dims(out)
    w = out.weight.detach()
    w = w[idx].clone() if _is_conv1d(out) else w[:, idx].clone()
    b = None if out.bias is None else out.bias.detach().clone()
    _set(ffn, stack.hf_out, _linear_like(out, k, d_out, w, b))


def _resize_site(hf: nn.Module, stack: Stack, layer: int, width: int) -> None:
    """Give one FFN of a plain HF model ``width`` neurons (uninitialised weights)."""
    ffn = _get(hf, stack.hf_ffn.format(i=layer))
    where = f"{stack.hf_ffn.format(i=layer)}"
    for name in stack.hf_in:
        lin = _get(ffn, name)
        _check_linear(lin, f"{where}.{name}")
        d_in, d_out = _dims(lin)
        if d_out != width:
            _set(
                ffn, name, _linear_like(lin, d_in, width, None, None if lin.bias is None else True)
            )
    out = _get(ffn, stack.hf_out)
    _check_linear(out, f"{where}.{stack.hf_out}")
    d_in, d_out = _dims(out)
    if d_in != width:
        _set(
            ffn,
            stack.hf_out,
            _linear_like(out, width, d_out, None, None if out.bias is None else True),
        )


def _set_config_width(config, widths: Mapping[str, int]) -> None:
    """Informational: the config's FFN width becomes the widest pruned FFN."""
    if not widths:
        return
    for attr in INTERMEDIATE_ATTRS:
        if attr in config.to_dict():
            setattr(config, attr, max(widths.values()))
            return


# ---------------------------------------------------------------------- saving / loading
def save_pruned(model: NeuronModel, path: str | os.PathLike) -> Path:
    """Write a pruned model to a directory: HF ``config.json`` + ``model.safetensors``, the
    tokenizer, and ``pruning.json`` (the record and every site's width).

    An unpruned model can be saved too (its record then keeps every neuron). Returns the
    directory. Load it back with :func:`load_pruned` (a plain ``load_model(path)`` cannot,
    as FFN widths differ between layers).
    """

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise NeuronLensError(f"{out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    record: PruningRecord | None = getattr(model, "pruning", None)
    sites = model.sites
    if record is None:
        record = PruningRecord(
            kept={s.name: list(range(s.width)) for s in sites},
            original_widths={s.name: s.width for s in sites},
            source_model=model.name,
        )
    hf = plain_hf_model(model)
    hf.config.architectures = [type(hf).__name__]
    with quiet_transformers():
        hf.save_pretrained(str(out), safe_serialization=True)
    model.tokenizer.save_pretrained(str(out))
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": model.name,
        "family": model.family.name,
        "has_lm_head": model.has_lm_head,
        "dtype": str(model.dtype).removeprefix("torch."),
        "sites": [[s.stack, s.layer, s.width] for s in sites],
        "record": record.to_dict(),
        "versions": library_versions(),
    }
    (out / RECORD_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def load_pruned(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    name: str | None = None,
) -> NeuronModel:
    """Load a model written by :func:`save_pruned` (with its ``pruning`` record).

    Raises:
        DataFileNotFoundError: the directory or one of its files is missing.
        NeuronLensError: ``pruning.json`` is not a valid record of this format.
        ShapeMismatchError: the weights do not match the record's widths.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = Path(path)
    if not root.is_dir():
        raise DataFileNotFoundError(f"no saved pruned model at {root} (not a directory)")
    for fname in (RECORD_FILE, "config.json", WEIGHTS_FILE):
        if not (root / fname).is_file():
            raise DataFileNotFoundError(
                f"{root} is not a saved pruned model: {fname} is missing (write one with save_pruned)"
            )
    try:
        meta = json.loads((root / RECORD_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NeuronLensError(f"{root / RECORD_FILE} is not valid JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise NeuronLensError(f"{root / RECORD_FILE} was not written by neuronlens.save_pruned")
    if meta.get("format_version") != FORMAT_VERSION:
        raise NeuronLensError(
            f"{root / RECORD_FILE} has format version {meta.get('format_version')!r}; this "
            f"neuronlens reads version {FORMAT_VERSION}"
        )
    try:
        record = PruningRecord.from_dict(meta["record"])
        widths = {f"{st}.{int(layer)}": int(w) for st, layer, w in meta["sites"]}
        dtype = getattr(torch, str(meta["dtype"]))
        has_lm_head = bool(meta["has_lm_head"])
        label = name or str(meta["name"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        if isinstance(e, NeuronLensError):
            raise
        raise NeuronLensError(f"{root / RECORD_FILE} is incomplete or corrupted: {e!r}") from e
    if not isinstance(dtype, torch.dtype):
        raise NeuronLensError(f"{root / RECORD_FILE}: unknown dtype {meta['dtype']!r}")
    if record.widths != widths:
        raise ShapeMismatchError(
            f"{root / RECORD_FILE}: the record's kept neurons {record.widths} do not match the "
            f"saved site widths {widths}"
        )

    config = transformers.AutoConfig.from_pretrained(str(root))
    archs = list(getattr(config, "architectures", None) or [])
    if not archs:
        raise NeuronLensError(f"{root / 'config.json'} names no architecture")
    family, cls_name = family_for_architecture(archs[0])
    _, stacks = family.resolve(config)
    by_stack = {st.bridge_name: st for st in stacks}
    with _no_init(), quiet_transformers():
        hf = getattr(transformers, cls_name)(config)
    hf.to(dtype)
    for site_name, width in widths.items():
        stack_name, _, layer = site_name.rpartition(".")
        if stack_name not in by_stack:
            raise NeuronLensError(
                f"{root / RECORD_FILE} names stack {stack_name!r}; {cls_name} has "
                f"{sorted(by_stack)}"
            )
        try:
            _resize_site(hf, by_stack[stack_name], int(layer), width)
        except (AttributeError, IndexError) as e:
            raise ShapeMismatchError(
                f"{root / RECORD_FILE} names site {site_name}, which the saved config's model "
                "does not have"
            ) from e
    try:
        state = load_file(str(root / WEIGHTS_FILE))
    except (SafetensorError, OSError) as e:
        raise NeuronLensError(f"{root / WEIGHTS_FILE} cannot be read: {e}") from e
    _load_state(hf, state, root)
    hf.eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(root))
    with torch.no_grad():
        model = load_model(hf, tokenizer, device=device, name=label, has_lm_head=has_lm_head)
    got = {s.name: s.width for s in model.sites}
    if got != widths:
        raise ShapeMismatchError(f"{root}: loaded site widths {got} differ from saved {widths}")
    model.pruning = record
    return model


def _load_state(hf: nn.Module, state: dict[str, Tensor], root: Path) -> None:
    """Load a saved state dict strictly, allowing only tied weights to be absent."""
    own = dict(hf.state_dict())
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise ShapeMismatchError(
            f"{root / WEIGHTS_FILE} holds weights the model does not have: {unexpected[:5]}"
        )
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise ShapeMismatchError(
                f"{root / WEIGHTS_FILE}: {key} is saved with shape {list(value.shape)}, the "
                f"model built from the config and the record expects {list(own[key].shape)}"
            )
    # tied weights are saved once: a missing key is fine when a tensor it shares storage
    # with is loaded
    groups: dict[int, list[str]] = {}
    for key, tensor in _named_tensors(hf):
        groups.setdefault(id(tensor), []).append(key)
    loaded = set(state)
    missing = [
        key
        for key in own
        if key not in loaded
        and not any(k in loaded for g in groups.values() if key in g for k in g)
    ]
    if missing:
        raise ShapeMismatchError(f"{root / WEIGHTS_FILE} lacks weights: {missing[:5]}")
    hf.load_state_dict(state, strict=False)


# ---------------------------------------------------------------------- FLOP ceiling
@dataclass(frozen=True)
class ModelDims:
    """The dimensions that set a transformer's matmul FLOPs.

    Attributes:
        d_model: residual width.
        ffn_widths: FFN width of each layer of the encoder (or the only stack).
        gated: gated FFN (three ``d_model x width`` matrices instead of two).
        attn_dim: query / output projection width (heads x head dim; default ``d_model``).
        kv_dim: key / value projection width (smaller with grouped-query attention;
            default ``attn_dim``).
        decoder_ffn_widths: FFN widths of an encoder-decoder model's decoder layers.
        vocab_size: for the optional LM-head count.
    """

    d_model: int
    ffn_widths: tuple[int, ...]
    gated: bool = False
    attn_dim: int | None = None
    kv_dim: int | None = None
    decoder_ffn_widths: tuple[int, ...] = ()
    vocab_size: int = 0

    @classmethod
    def uniform(cls, d_model: int, d_ff: int, n_layers: int, **kwargs) -> ModelDims:
        """Every layer with the same FFN width (e.g. BERT-base: ``uniform(768, 3072, 12)``)."""
        return cls(d_model, (d_ff,) * n_layers, **kwargs)

    @classmethod
    def of(cls, model: NeuronModel) -> ModelDims:
        """A model's dimensions; for a pruned model, those of the *original* model."""
        cfg = model.hf_model.config
        d = model.d_model
        heads = _first_attr(cfg, ("num_attention_heads", "n_head", "num_heads"))
        head_dim = _first_attr(cfg, ("head_dim", "d_kv"))
        if heads and not head_dim:
            head_dim = d // heads
        attn = heads * head_dim if heads and head_dim else d
        kv_heads = _first_attr(cfg, ("num_key_value_heads",)) or heads
        kv = kv_heads * head_dim if kv_heads and head_dim else attn
        record: PruningRecord | None = getattr(model, "pruning", None)
        widths = {s.name: s.width for s in model.sites}
        if record is not None:
            widths = dict(record.original_widths)
        enc = tuple(w for k, w in widths.items() if not k.startswith("decoder_blocks."))
        dec = tuple(w for k, w in widths.items() if k.startswith("decoder_blocks."))
        return cls(
            d_model=d,
            ffn_widths=enc,
            gated=model.gated,
            attn_dim=attn,
            kv_dim=kv,
            decoder_ffn_widths=dec,
            vocab_size=model.vocab_size,
        )


def _first_attr(cfg, names: Sequence[str]) -> int | None:
    for n in names:
        v = getattr(cfg, n, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


@dataclass(frozen=True)
class FlopCount:
    """Matmul FLOPs of one forward pass (2 FLOPs per multiply-add), by part."""

    attention: float
    """q, k, v and output projections (cross-attention included for encoder-decoders)."""
    scores: float
    """``Q K^T`` and ``softmax(.) V``."""
    ffn: float
    """The FFN linears: the only part FFN pruning shrinks."""
    lm_head: float = 0.0

    @property
    def total(self) -> float:
        return self.attention + self.scores + self.ffn + self.lm_head


def flop_count(
    model: NeuronModel | ModelDims,
    seq_len: int = 128,
    *,
    kept_ratio: float = 1.0,
    decoder_len: int = 1,
    lm_head: bool = False,
) -> FlopCount:
    """Matmul FLOPs of one forward pass over ``seq_len`` tokens (one sequence).

    Counted per token and layer (in multiply-adds, doubled to FLOPs): attention projections
    ``d·attn + 2·d·kv + attn·d`` (= ``4·d²`` for ordinary multi-head attention), attention
    scores ``2·seq·attn`` (``QK^T`` and the weighted sum of values over all ``seq`` keys; a
    causal mask is not credited, as HF computes the full matrix), FFN ``2·d·width``
    (``3·d·width`` gated). Biases, LayerNorms, activations, softmax and embeddings are not
    counted. An encoder-decoder's decoder runs ``decoder_len`` tokens (1: the first decoder
    step neuronlens reads labels from) with self- and cross-attention (the cross-attention
    keys and values are projected from the ``seq_len`` encoder tokens). ``lm_head=True`` adds
    ``d·vocab`` for every output position (off by default: classification reads one position,
    and the papers' ceilings exclude it). ``kept_ratio`` scales every FFN width.

    ``model`` is a :class:`NeuronModel` (for a pruned one, the original widths are used:
    pass ``kept_ratio=model.pruning.kept_ratio``) or a :class:`ModelDims`.
    """
    dims = ModelDims.of(model) if isinstance(model, NeuronModel) else model
    if not isinstance(dims, ModelDims):
        raise NeuronLensError(f"flop_count needs a NeuronModel or ModelDims, got {type(model)!r}")
    if not 0.0 <= kept_ratio <= 1.0:
        raise NeuronLensError(f"kept_ratio must be within 0..1, got {kept_ratio}")
    if seq_len < 1 or decoder_len < 1:
        raise NeuronLensError("seq_len and decoder_len must be >= 1")
    d = dims.d_model
    attn = dims.attn_dim or d
    kv = dims.kv_dim or attn
    ffn_mats = 3 if dims.gated else 2
    proj = d * attn + 2 * d * kv + attn * d  # per token

    n_enc = len(dims.ffn_widths)
    enc_tokens = seq_len
    attention = enc_tokens * proj * n_enc
    scores = enc_tokens * 2 * seq_len * attn * n_enc
    ffn = enc_tokens * ffn_mats * d * sum(dims.ffn_widths) * kept_ratio
    head_tokens = enc_tokens
    if dims.decoder_ffn_widths:
        n_dec, t = len(dims.decoder_ffn_widths), decoder_len
        # self-attention + cross-attention (q, o on decoder tokens; k, v on encoder tokens)
        attention += n_dec * (t * proj + t * 2 * d * attn + seq_len * 2 * d * kv)
        scores += n_dec * (t * 2 * t * attn + t * 2 * seq_len * attn)
        ffn += t * ffn_mats * d * sum(dims.decoder_ffn_widths) * kept_ratio
        head_tokens = t
    head = head_tokens * d * dims.vocab_size if lm_head else 0
    return FlopCount(
        attention=2.0 * attention, scores=2.0 * scores, ffn=2.0 * ffn, lm_head=2.0 * head
    )


def flop_ceiling(
    model: NeuronModel | ModelDims,
    kept_ratio: float,
    seq_len: int = 128,
    *,
    decoder_len: int = 1,
    lm_head: bool = False,
) -> float:
    """Theoretical speed-up of keeping ``kept_ratio`` of the FFN neurons (FFN-only pruning):
    matmul FLOPs unpruned / pruned, counted as in :func:`flop_count`.

    BERT-base at 128 tokens (``ModelDims.uniform(768, 3072, 12)``): 1.24× at
    ``kept_ratio=0.7``, 1.48× at 0.5, 1.83× at 0.3.
    """
    full = flop_count(model, seq_len, decoder_len=decoder_len, lm_head=lm_head)
    pruned = flop_count(
        model, seq_len, kept_ratio=kept_ratio, decoder_len=decoder_len, lm_head=lm_head
    )
    return full.total / pruned.total
