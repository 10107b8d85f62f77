"""Saving and loading results: safetensors for tensors, JSON for metadata.

Every saved result is two files side by side: ``NAME.safetensors`` (the tensors, with the
metadata also embedded as a JSON string under the key ``"neuronlens"``) and ``NAME.json``
(the same metadata, for people and tools that do not read safetensors). Every file is written
under a temporary name and renamed into place, so a process killed mid-save never leaves a
partial result that a later run could load.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import math
import numbers
import os
import platform
import shutil
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


def finite_or_none(value):
    """``value`` with every non-finite float (NaN, inf) replaced by ``None``, numpy and torch
    scalars and arrays made plain: what strict JSON can hold."""
    if isinstance(value, dict):
        return {str(k): finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, str):  # numpy / torch
        return finite_or_none(value.tolist())
    if isinstance(value, float) or (
        isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral)
    ):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def json_text(value, **kwargs) -> str:
    """Strict JSON (no ``NaN`` / ``Infinity``, which strict parsers reject): non-finite
    numbers become ``null``; values JSON cannot hold otherwise are written with ``str``."""
    return json.dumps(finite_or_none(value), allow_nan=False, default=str, **kwargs)


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (read in 1 MiB blocks), as hex: how saved files are
    checked to be the ones written."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stem(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".safetensors", ".json") else p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; once the block has written it, rename it to
    ``path`` in one step. A process killed at any moment leaves the old file or the new one,
    never half of one (the temporary file is removed when the block raises)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink() if tmp.is_file() else shutil.rmtree(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temporary directory; then swap it in for ``path`` (the old one is removed
    only after the new one is in place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def save_result(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict, *, kind: str
) -> Path:
    """Write ``path.json`` then ``path.safetensors`` (each atomically); returns the
    safetensors path, the file that :func:`load_result` reads."""
    stem = _stem(path)
    meta = {
        "kind": kind,
        "format_version": FORMAT_VERSION,
        "versions": library_versions(),
        **metadata,
    }
    text = json_text(meta, indent=2, sort_keys=True)
    write_text_atomic(stem.with_name(stem.name + ".json"), text + "\n")
    st = stem.with_name(stem.name + ".safetensors")
    with atomic_path(st) as tmp:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
            str(tmp),
            metadata={"neuronlens": text},
        )
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
