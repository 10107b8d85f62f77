"""Helpers shared by the benchmark scripts (run them as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import copy

import torch

import neuronlens as nl
from neuronlens.models import Encoded


def random_batch(model: nl.NeuronModel, batch: int, length: int, seed: int = 0) -> Encoded:
    """``batch`` x ``length`` random token ids (no padding) for timing a model."""
    g = torch.Generator().manual_seed(seed)
    low = 1000 if model.vocab_size > 2000 else 7  # skip special / unused low ids
    ids = torch.randint(low, model.vocab_size, (batch, length), generator=g)
    return Encoded(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        token_type_ids=torch.zeros_like(ids) if model.family.name == "bert" else None,
    )


def with_attention(hf: torch.nn.Module, impl: str = "eager") -> torch.nn.Module:
    """A copy of ``hf`` running attention ``impl`` (``"eager"``, what the bridge forces, or
    ``"sdpa"``): the plain baselines of the benchmarks, so a ratio compares like with like."""
    out = copy.deepcopy(hf)
    if hasattr(out, "set_attn_implementation"):
        out.set_attn_implementation(impl)
    else:
        out.config._attn_implementation = impl
    if out.config._attn_implementation != impl:
        raise RuntimeError(f"could not set attn_implementation={impl!r}")
    return out.eval()
