"""Structured pruning of FFN neurons: smaller, faster models, saved and loaded with their record.

:mod:`~neuronlens.pruning.prune` (pruning), :mod:`~neuronlens.pruning.storage` (saving and
loading pruned models), :mod:`~neuronlens.pruning.flops` (FLOP counts, speed-up ceilings),
:mod:`~neuronlens.pruning.search` (SKELETON / SKIP), :mod:`~neuronlens.pruning.surgery`
(the module surgery underneath).
"""

from neuronlens.pruning.flops import FlopCount, ModelDims, flop_ceiling, flop_count
from neuronlens.pruning.prune import PruningRecord, prune_model
from neuronlens.pruning.search import (
    SearchResult,
    SearchStep,
    interleaved_latency,
    keep_top,
    retrain_prompt,
    skeleton_search,
    skip_search,
)
from neuronlens.pruning.storage import load_pruned, save_pruned
from neuronlens.pruning.surgery import plain_hf_model

__all__ = [
    "FlopCount",
    "ModelDims",
    "PruningRecord",
    "flop_ceiling",
    "flop_count",
    "load_pruned",
    "plain_hf_model",
    "prune_model",
    "save_pruned",
    "SearchResult",
    "SearchStep",
    "interleaved_latency",
    "keep_top",
    "retrain_prompt",
    "skeleton_search",
    "skip_search",
]
