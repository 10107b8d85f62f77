"""Saving and loading pruned models: HF config and weights, tokenizer, and the pruning record.

A plain HF config cannot describe a pruned model (each layer may have another FFN width), so
:func:`load_pruned` builds the model from its config, resizes every FFN to the saved widths,
then loads the weights strictly (only tied weights may be absent).

An encoder without a trained LM head (``has_lm_head`` False: all-MiniLM-L6-v2) is saved as
its base model (``BertModel``, ``RobertaModel``, ...), as such checkpoints ship: its head
holds random weights, which would take room (MiniLM's decoder bias and transform, or a whole
untied decoder) and mean nothing.
:func:`load_pruned` gives it back the head ``load_model`` gives such a checkpoint, drawn
from a fixed seed (:func:`~neuronlens.models.loading.draw_head`), so even its full-forward
logits are the saved model's; no verbalizer reads it (``kind=ModelKind.ENCODER``).

``pruning.json`` lists every other file of the folder with its size and SHA-256;
:func:`load_pruned` checks them all before it reads any, so a missing tokenizer or a
truncated or swapped file is an error, never a model that loads and answers wrongly.
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

from neuronlens.errors import (
    DataError,
    DataFileNotFoundError,
    NeuronLensError,
    ShapeMismatchError,
)
from neuronlens.io import atomic_dir, file_sha256, json_text, library_versions
from neuronlens.models.families import Family, family_for_architecture
from neuronlens.models.loading import draw_head, load_model, quiet_transformers
from neuronlens.models.model import NeuronModel, config_head_dim
from neuronlens.models.placement import dtype_name
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
FORMAT_VERSION = 2
"""2: ``pruning.json`` lists every file (name, bytes, SHA-256); a headless encoder is saved as
its base model. Version 1 folders (no file list) still load, checked for a tokenizer."""
READ_VERSIONS = (1, 2)
TOKENIZER_VOCABS = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "tokenizer.model",
    "sentencepiece.bpe.model",
)
"""A tokenizer's vocabulary files, one of which a folder needs: without it transformers
builds a tokenizer of its few special tokens, which reads every word as unknown."""
LOADED_SUFFIXES = (".json", ".txt", ".model", ".safetensors", ".bin", ".jinja")
"""Files transformers may read from a model folder: one save_pruned did not write is refused."""
RESAVE = "prune the model again and save it with save_pruned, or restore the folder's files"


def save_pruned(model: NeuronModel, path: str | os.PathLike) -> Path:
    """Write a pruned model to a directory: HF ``config.json`` + ``model.safetensors``, the
    tokenizer, and ``pruning.json`` (the record, every site's width, and every other file's
    name, size and SHA-256).

    A model without a trained LM head (``model.has_lm_head`` False) is saved as its base
    model, without the head. An unpruned model can be saved too (its record then keeps
    every neuron). Returns the directory. Load it back with :func:`load_pruned` (a plain
    ``load_model(path)`` cannot, as FFN widths differ between layers).
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
    weights = hf if model.has_lm_head else _base_model(hf, model.family)
    weights.config.architectures = [type(weights).__name__]
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": model.name,
        "family": model.family.name,
        "has_lm_head": model.has_lm_head,
        "dtype": dtype_name(model.dtype),
        "sites": [[s.stack, s.layer, s.width] for s in sites],
        "heads": _head_rows(model, hf) if any(k.endswith(".heads") for k in record.kept) else [],
        "attn_out": _gather_rows(model, hf),
        "record": record.to_dict(),
        "versions": library_versions(),
    }
    with atomic_dir(out) as tmp:  # a killed save leaves the old directory, or the new one
        with quiet_transformers():
            weights.save_pretrained(str(tmp), safe_serialization=True)
        model.tokenizer.save_pretrained(str(tmp))
        meta["files"] = _file_rows(tmp)
        (tmp / RECORD_FILE).write_text(json_text(meta, indent=2, sort_keys=True) + "\n")
    return out


def _base_model(hf: nn.Module, family: Family) -> nn.Module:
    """The model without its LM head, where the family table names its base class (the head
    is then left out of the saved files); else the whole model (T5's base is itself)."""
    base = hf.base_model
    return base if base is not hf and type(base).__name__ in family.base_models else hf


def _file_rows(root: Path) -> list[dict]:
    """``{"name", "bytes", "sha256"}`` of every file under ``root`` but the record."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != RECORD_FILE)
    return [
        {
            "name": p.relative_to(root).as_posix(),
            "bytes": p.stat().st_size,
            "sha256": file_sha256(p),
        }
        for p in files
    ]


def load_pruned(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    name: str | None = None,
) -> NeuronModel:
    """Load a model written by :func:`save_pruned` (with its ``pruning`` record).

    Every file ``pruning.json`` lists is checked (present, same size, same SHA-256) before
    any is read. A headless encoder, saved as its base model, gets the LM head that
    :func:`~neuronlens.models.loading.draw_head` draws from a fixed seed, as ``load_model``
    gives a checkpoint without one: nothing reads it (``kind=ModelKind.ENCODER``).

    Raises:
        DataFileNotFoundError: the directory or one of its files is missing.
        DataError: a file differs from the one save_pruned wrote, or the folder holds a
            model file it did not write.
        NeuronLensError: ``pruning.json`` is not a valid record of this format.
        ShapeMismatchError: the weights do not match the record's widths.
    """
    root = Path(path)
    record, widths, heads, gathers, dtype, has_lm_head, label = _read_record(root, name)
    config = transformers.AutoConfig.from_pretrained(str(root))
    hf = _empty_model(root, config, widths, dtype)
    _resize_heads(root, hf, config, heads)
    _resize_gathers(root, hf, config, gathers)
    target = _weights_target(root, hf, config, has_lm_head)
    try:
        state = load_file(str(root / WEIGHTS_FILE))
    except (SafetensorError, OSError) as e:
        raise NeuronLensError(f"{root / WEIGHTS_FILE} cannot be read: {e}; {RESAVE}") from e
    _load_state(target, state, root)
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
    ``pruning.json``, every file checked present and unchanged and the record checked whole."""
    if not root.is_dir():
        raise DataFileNotFoundError(f"no saved pruned model at {root} (not a directory)")
    if not (root / RECORD_FILE).is_file():
        raise DataFileNotFoundError(
            f"{root} is not a saved pruned model: {RECORD_FILE} is missing (write one with "
            "save_pruned)"
        )
    try:
        meta = json.loads((root / RECORD_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NeuronLensError(
            f"{root / RECORD_FILE} is not valid JSON ({e}); the folder cannot be checked or "
            f"loaded: {RESAVE}"
        ) from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise NeuronLensError(
            f"{root / RECORD_FILE} was not written by neuronlens.save_pruned: {RESAVE}"
        )
    if meta.get("format_version") not in READ_VERSIONS:
        raise NeuronLensError(
            f"{root / RECORD_FILE} has format version {meta.get('format_version')!r}; this "
            f"neuronlens reads versions {list(READ_VERSIONS)} (written by a newer neuronlens? "
            f"update it; else {RESAVE})"
        )
    if meta["format_version"] >= 2:
        _check_files(root, meta.get("files"))
    for fname in ("config.json", WEIGHTS_FILE):  # a version-1 folder lists no files
        if not (root / fname).is_file():
            raise DataFileNotFoundError(
                f"{root} is not a saved pruned model: {fname} is missing ({RESAVE})"
            )
    if not any((root / fname).is_file() for fname in TOKENIZER_VOCABS):
        raise DataFileNotFoundError(
            f"{root} has no tokenizer vocabulary (none of {list(TOKENIZER_VOCABS)}): the "
            f"tokenizer would read every word as unknown; {RESAVE}"
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


def _check_files(root: Path, rows) -> None:
    """Every file ``pruning.json`` lists is there, with its size and SHA-256, and no model or
    tokenizer file that save_pruned did not write sits beside them."""
    where = root / RECORD_FILE
    try:
        files = {str(r["name"]): (int(r["bytes"]), str(r["sha256"])) for r in rows}
    except (KeyError, TypeError, ValueError) as e:
        raise NeuronLensError(
            f"{where}: its list of files is missing or corrupted ({e!r}); {RESAVE}"
        ) from e
    for fname, (size, digest) in files.items():
        path = root / fname
        if not path.is_file():
            raise DataFileNotFoundError(
                f"{path} is missing: save_pruned wrote it and the model cannot load without "
                f"it; {RESAVE}"
            )
        got = path.stat().st_size
        if got != size or file_sha256(path) != digest:
            how = f"{got} bytes, saved with {size}" if got != size else "its SHA-256 differs"
            raise DataError(
                f"{path} is not the file save_pruned wrote ({how}): it was changed, truncated "
                f"or replaced since; {RESAVE}"
            )
    extra = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix in LOADED_SUFFIXES
        and p.name != RECORD_FILE
        and not p.name.startswith(".")
        and p.relative_to(root).as_posix() not in files
    )
    if extra:
        raise DataError(
            f"{root} holds {extra}, which save_pruned did not write and transformers may read "
            "with the model: remove them, or save the model again with save_pruned"
        )


def _weights_target(root: Path, hf: nn.Module, config, has_lm_head: bool) -> nn.Module:
    """The module the saved weights load into: the whole model, or, when the folder holds a
    base model (a headless encoder), its base model, the head drawn by
    :func:`~neuronlens.models.loading.draw_head`."""
    saved = config.architectures[0]
    if type(hf).__name__ == saved:
        return hf
    base = hf.base_model
    if type(base).__name__ != saved:
        raise ShapeMismatchError(
            f"{root / 'config.json'} names {saved}, which is neither {type(hf).__name__} nor "
            f"its base model {type(base).__name__}"
        )
    if has_lm_head:
        raise ShapeMismatchError(
            f"{root}: the weights are a {saved} without an LM head, but {RECORD_FILE} says "
            f"the model has one; {RESAVE}"
        )
    draw_head(hf)
    return base


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
    hf.tie_weights()  # the config's tied weights are saved once (no_init skips the tying)
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
    for keys in groups.values():  # saved twice: the model ties them, so they must agree
        saved = [state[k] for k in keys if k in state]
        if any(not torch.equal(saved[0], t) for t in saved[1:]):
            raise ShapeMismatchError(
                f"{root / WEIGHTS_FILE} holds different values for {keys}, which the model "
                "built from the config ties into one tensor"
            )
    hf.load_state_dict(state, strict=False)
