"""neuronlens: neuron-level interpretability of transformer feed-forward networks.

Load a model as a hooked transformer (:func:`load_model`) and capture FFN neuron activations
(:func:`capture`) here; the subpackages do the rest: ``neuronlens.tasks`` (data),
``neuronlens.prompts`` (prompt tuning), ``neuronlens.probes`` (predictivity, attribution, your
own probes), ``neuronlens.interventions`` and ``neuronlens.analysis`` (ablation studies),
``neuronlens.pruning`` (structured pruning, SKELETON / SKIP), ``neuronlens.plots`` (figures),
``neuronlens.study`` (whole studies; the ``neuronlens`` command).
"""

from neuronlens.capture import (
    ActivationArrays,
    AllTokens,
    CaptureBatch,
    LastToken,
    MaskToken,
    PositionRange,
    Positions,
    PromptTokens,
    RunningMean,
    SiteBatch,
    capture,
    collect_activations,
)
from neuronlens.errors import NeuronLensError
from neuronlens.models import (
    Encoded,
    Family,
    ModelKind,
    NeuronModel,
    Site,
    Stack,
    families,
    load_model,
    register_family,
    unregister_family,
)
from neuronlens.models.assets import load_minilm, load_smollm2

__version__ = "0.1.0"

__all__ = [
    "ActivationArrays",
    "AllTokens",
    "CaptureBatch",
    "Encoded",
    "Family",
    "LastToken",
    "MaskToken",
    "ModelKind",
    "NeuronLensError",
    "NeuronModel",
    "PositionRange",
    "Positions",
    "PromptTokens",
    "RunningMean",
    "Site",
    "SiteBatch",
    "Stack",
    "capture",
    "collect_activations",
    "families",
    "load_minilm",
    "load_model",
    "load_smollm2",
    "register_family",
    "unregister_family",
]
