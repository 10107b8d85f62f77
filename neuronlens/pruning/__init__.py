"""Structured pruning of FFN neurons: smaller, faster models, saved and loaded with their record.

See :mod:`neuronlens.pruning.prune` (pruning) and :mod:`neuronlens.pruning.search`
(SKELETON / SKIP).
"""

from neuronlens.pruning.prune import (
    FlopCount,
    ModelDims,
    PruningRecord,
    flop_ceiling,
    flop_count,
    load_pruned,
    plain_hf_model,
    prune_model,
    save_pruned,
)
from neuronlens.pruning.search import (
    SearchResult,
    SearchStep,
    interleaved_latency,
    keep_top,
    retrain_prompt,
    skeleton_search,
    skip_search,
)

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
