"""The probe layer: every neuron score goes through one API (see :mod:`neuronlens.probes.base`).

* :func:`predictivity` - skill-neuron predictivity (robustness paper eqs. 2-5);
* :func:`attribute` - gradient x activation attribution and its baselines (SKELETON), each
  a method class with one call signature (:class:`GradientXActivation`, ...);
* :func:`top_examples` - the examples that activate a neuron most, token by token (a
  streaming top-k, mergeable like every probe);
* :class:`Probe` / :func:`run_probe` - write your own; states merge across shards and
  processes (``torchrun``);
* :class:`NeuronScores` / :class:`NeuronSet` - scores with metadata, top-k, random controls,
  ranks, Spearman, save / load.
"""

from neuronlens.neurons import NeuronScores, NeuronSet, SpearmanResult
from neuronlens.probes.attribution import (
    METHODS,
    Activation,
    AttributionMethod,
    AttributionProbe,
    Gradient,
    GradientXActivation,
    RandomScores,
    attribute,
)
from neuronlens.probes.base import (
    Probe,
    ProbeInfo,
    ProbeRun,
    collect_state,
    init_distributed,
    reduce_state,
    run_probe,
)
from neuronlens.probes.predictivity import BaselineProbe, NeuronAccuracyProbe, predictivity
from neuronlens.probes.top_examples import (
    Example,
    NeuronRecord,
    TopExamples,
    TopExamplesProbe,
    top_examples,
)

__all__ = [
    "METHODS",
    "Activation",
    "AttributionMethod",
    "AttributionProbe",
    "Gradient",
    "GradientXActivation",
    "RandomScores",
    "BaselineProbe",
    "Example",
    "NeuronRecord",
    "TopExamples",
    "TopExamplesProbe",
    "top_examples",
    "NeuronAccuracyProbe",
    "NeuronScores",
    "NeuronSet",
    "Probe",
    "ProbeInfo",
    "ProbeRun",
    "SpearmanResult",
    "attribute",
    "collect_state",
    "init_distributed",
    "predictivity",
    "reduce_state",
    "run_probe",
]
