"""Saving and loading pruned models: HF config and weights, tokenizer, and the pruning record.

A plain HF config cannot describe a pruned model (each layer may have another FFN width), so
:func:`load_pruned` builds the model from its config, resizes every FFN to the saved widths,
then loads the weights strictly (only tied weights may be absent).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import transformers
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from neuronlens.errors import DataFileNotFoundError, NeuronLensError, ShapeMismatchError
from neuronlens.io import atomic_dir, library_versions
from neuronlens.models.families import family_for_architecture
from neuronlens.models.loading import load_model, quiet_transformers
from neuronlens.models.model import NeuronModel, config_head_dim
from neuronlens.pruning.prune import PruningRecord
from neuronlens.pruning.surgery import (
    gathered_inputs,
    head_counts,
    named_tensors,
    no_init,
    plain_hf_model,
    resize_heads,
    resize_inputs,
    resize_site,
)

RECORD_FILE = "pruning.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "neuronlens-pruned-model"
FORMAT_VERSION = 1


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
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": model.name,
        "family": model.family.name,
        "has_lm_head": model.has_lm_head,
        "dtype": str(model.dtype).removeprefix("torch."),
        "sites": [[s.stack, s.layer, s.width] for s in sites],
        "heads": _head_rows(model, hf) if any(k.endswith(".heads") for k in record.kept) else [],
        "attn_out": _gather_rows(model, hf),
        "record": record.to_dict(),
        "versions": library_versions(),
    }
    with atomic_dir(out) as tmp:  # a killed save leaves the old directory, or the new one
        with quiet_transformers():
            hf.save_pretrained(str(tmp), safe_serialization=True)
        model.tokenizer.save_pretrained(str(tmp))
        (tmp / RECORD_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
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
    root = Path(path)
    record, widths, heads, gathers, dtype, has_lm_head, label = _read_record(root, name)
    config = transformers.AutoConfig.from_pretrained(str(root))
    hf = _empty_model(root, config, widths, dtype)
    _resize_heads(root, hf, config, heads)
    _resize_gathers(root, hf, config, gathers)
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
    got_heads = {s.name: s.width for s in model.attention_sites("heads")}
    if any(got_heads.get(f"{st}.{layer}.heads") != n_q for st, layer, n_q, _ in heads):
        raise ShapeMismatchError(f"{root}: loaded head counts {got_heads} differ from {heads}")
    model.pruning = record
    return model


def _read_record(root: Path, name: str | None):
    """``(record, widths, heads, gathers, dtype, has_lm_head, name)`` from a saved model's
    ``pruning.json``,
    every file checked present and the record checked whole."""
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
        heads = [
            (str(st), int(layer), int(q), int(kv)) for st, layer, q, kv in meta.get("heads", [])
        ]
        gathers = [(str(st), int(layer), int(k)) for st, layer, k in meta.get("attn_out", [])]
        dtype = getattr(torch, str(meta["dtype"]))
        has_lm_head = bool(meta["has_lm_head"])
        label = name or str(meta["name"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        if isinstance(e, NeuronLensError):
            raise
        raise NeuronLensError(f"{root / RECORD_FILE} is incomplete or corrupted: {e!r}") from e
    if not isinstance(dtype, torch.dtype):
        raise NeuronLensError(f"{root / RECORD_FILE}: unknown dtype {meta['dtype']!r}")
    saved = widths | {f"{st}.{layer}.heads": q for st, layer, q, _ in heads}
    # an attention output keeps its width when features are removed: only the pruned ones
    # are listed (with the features they read)
    saved |= {f"{st}.{layer}.attn_out": k for st, layer, k in gathers}
    listed = {k: v for k, v in record.widths.items() if not k.endswith(".attn_out") or k in saved}
    if listed != saved:
        raise ShapeMismatchError(
            f"{root / RECORD_FILE}: the record's kept neurons {record.widths} do not match the "
            f"saved site widths {saved}"
        )
    return record, widths, heads, gathers, dtype, has_lm_head, label


def _head_rows(model: NeuronModel, hf: nn.Module) -> list[list]:
    """``[stack, layer, query heads, key/value heads]`` of every attention module."""
    stacks = {st.bridge_name: st for st in model.stacks}
    rows = []
    for site in model.attention_sites("heads"):
        n_q, n_kv = head_counts(hf, stacks[site.stack], site.layer, model.head_dim)
        rows.append([site.stack, site.layer, n_q, n_kv])
    return rows


def _config_stacks(config) -> dict:
    """Bridge stack name -> the family table's stack, for a saved model's config."""
    family, _ = family_for_architecture(config.architectures[0])
    return {st.bridge_name: st for st in family.resolve(config)[1]}


def _gather_rows(model: NeuronModel, hf: nn.Module) -> list[list]:
    """``[stack, layer, features read]`` of every attention output with pruned inputs."""
    rows = []
    for stack in model.stacks:
        for layer in range(len(getattr(model.bridge, stack.bridge_name))):
            n = gathered_inputs(hf, stack, layer)
            if n is not None:
                rows.append([stack.bridge_name, layer, n])
    return rows


def _resize_gathers(root: Path, hf: nn.Module, config, gathers: list[tuple]) -> None:
    """Give the freshly built model's attention outputs the saved numbers of inputs."""
    if not gathers:
        return
    by_stack = _config_stacks(config)
    for stack_name, layer, n in gathers:
        if stack_name not in by_stack:
            raise NeuronLensError(f"{root / RECORD_FILE} names stack {stack_name!r}")
        try:
            resize_inputs(hf, by_stack[stack_name], layer, n)
        except (AttributeError, IndexError) as e:
            raise ShapeMismatchError(
                f"{root / RECORD_FILE} names attention layer {stack_name}.{layer}, which the "
                "saved config's model does not have"
            ) from e


def _resize_heads(root: Path, hf: nn.Module, config, heads: list[tuple]) -> None:
    """Give the freshly built model the saved head counts."""
    if not heads:
        return
    by_stack = _config_stacks(config)
    head_dim = config_head_dim(config, str(root))
    for stack_name, layer, n_q, n_kv in heads:
        if stack_name not in by_stack:
            raise NeuronLensError(f"{root / RECORD_FILE} names stack {stack_name!r}")
        stack = by_stack[stack_name]
        try:
            if head_counts(hf, stack, layer, head_dim) != (n_q, n_kv):
                resize_heads(hf, stack, layer, n_q, n_kv, head_dim)
        except (AttributeError, IndexError) as e:
            raise ShapeMismatchError(
                f"{root / RECORD_FILE} names attention layer {stack_name}.{layer}, which the "
                "saved config's model does not have"
            ) from e


def _empty_model(root: Path, config, widths: dict[str, int], dtype) -> nn.Module:
    """A model of the config's class with every FFN resized to the saved widths."""
    archs = list(getattr(config, "architectures", None) or [])
    if not archs:
        raise NeuronLensError(f"{root / 'config.json'} names no architecture")
    family, cls_name = family_for_architecture(archs[0])
    _, stacks = family.resolve(config)
    by_stack = {st.bridge_name: st for st in stacks}
    with no_init(), quiet_transformers():
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
            resize_site(hf, by_stack[stack_name], int(layer), width)
        except (AttributeError, IndexError) as e:
            raise ShapeMismatchError(
                f"{root / RECORD_FILE} names site {site_name}, which the saved config's model "
                "does not have"
            ) from e
    return hf


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
    for key, tensor in named_tensors(hf):
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
