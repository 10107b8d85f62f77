"""Helpers shared by the benchmark scripts (run them as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

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
