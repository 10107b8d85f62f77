"""Saving and loading results: safetensors for tensors, JSON for metadata.

Every saved result is two files side by side: ``NAME.safetensors`` (the tensors, with the
metadata also embedded as a JSON string under the key ``"neuronlens"``) and ``NAME.json``
(the same metadata, for people and tools that do not read safetensors).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from neuronlens.errors import DataFileNotFoundError, NeuronLensError

FORMAT_VERSION = 1


def library_versions() -> dict[str, str]:
    """Versions of the libraries a result depends on (recorded with every saved result)."""
    out = {"python": platform.python_version()}
    for pkg in ("neuronlens", "torch", "transformers", "transformer-lens"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def _stem(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".safetensors", ".json") else p


def save_result(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict, *, kind: str
) -> Path:
    """Write ``path.safetensors`` and ``path.json``; returns the safetensors path."""
    stem = _stem(path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "kind": kind,
        "format_version": FORMAT_VERSION,
        "versions": library_versions(),
        **metadata,
    }
    text = json.dumps(meta, indent=2, sort_keys=True)
    st = stem.with_name(stem.name + ".safetensors")
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
        str(st),
        metadata={"neuronlens": text},
    )
    stem.with_name(stem.name + ".json").write_text(text + "\n")
    return st


def load_result(path: str | os.PathLike, *, kind: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a result written by :func:`save_result`; checks that it is of the expected kind."""
    stem = _stem(path)
    st = stem.with_name(stem.name + ".safetensors")
    if not st.is_file():
        raise DataFileNotFoundError(f"no saved result at {st}")
    from safetensors import safe_open

    with safe_open(str(st), framework="pt") as f:
        raw = (f.metadata() or {}).get("neuronlens")
    if raw is None:
        raise NeuronLensError(f"{st} was not written by neuronlens (no metadata)")
    meta = json.loads(raw)
    if meta.get("kind") != kind:
        raise NeuronLensError(f"{st} holds a {meta.get('kind')!r}, not a {kind!r}")
    return load_file(str(st)), meta
