"""neuronlens: neuron-level interpretability of transformer feed-forward networks.

The calls a study is made of are here::

    import neuronlens as nl

    model = nl.load_minilm()                                   # or nl.load_model(name)
    tuned = nl.tune_prompt(model, nl.get_task("sst2"), n_tokens=20, readout="prompt")
    skill = nl.predictivity(model, tuned, task, dev, train=train)  # skill neurons
    attr = nl.attribute(model, tuned, task, train, n=20)      # gradient x activation
    nl.evaluate(model, tuned, dev, interventions=[nl.Zero(skill.top(percent=1))])
    small = nl.prune_model(model, attr.top(percent=50))       # really smaller

The subpackages hold the rest: ``neuronlens.capture`` (activation capture, positions),
``neuronlens.tasks`` (data), ``neuronlens.prompts`` (heads, prompt tuning),
``neuronlens.probes`` (probe API), ``neuronlens.interventions``, ``neuronlens.analysis``
(ablation studies), ``neuronlens.pruning`` (pruning, SKELETON / SKIP, FLOPs),
``neuronlens.plots`` (figures), ``neuronlens.study`` (whole studies; the ``neuronlens``
command).
"""

from neuronlens.capture import (
    AllTokens,
    AnswerToken,
    LastToken,
    MaskToken,
    Pooled,
    PromptAndAnswer,
    PromptTokens,
    RunningMean,
    capture,
    collect_activations,
)
from neuronlens.errors import NeuronLensError
from neuronlens.interventions import Noise, Replace, Retain, Zero, intervene
from neuronlens.logit_effect import logit_effect
from neuronlens.models import (
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
from neuronlens.neurons import NeuronScores, NeuronSet
from neuronlens.probes import Probe, TopExamples, attribute, predictivity, run_probe, top_examples
from neuronlens.prompts import PromptResult, evaluate, tune_prompt, tune_prompts
from neuronlens.pruning import prune_model, skeleton_search, skip_search
from neuronlens.tasks import get_task

__version__ = "0.1.0"

__all__ = [
    "AllTokens",
    "AnswerToken",
    "Family",
    "LastToken",
    "MaskToken",
    "ModelKind",
    "NeuronLensError",
    "NeuronModel",
    "NeuronScores",
    "NeuronSet",
    "Noise",
    "Pooled",
    "Probe",
    "PromptAndAnswer",
    "PromptResult",
    "PromptTokens",
    "Replace",
    "Retain",
    "RunningMean",
    "Site",
    "TopExamples",
    "Stack",
    "Zero",
    "attribute",
    "capture",
    "collect_activations",
    "evaluate",
    "families",
    "get_task",
    "intervene",
    "load_minilm",
    "load_model",
    "load_smollm2",
    "logit_effect",
    "predictivity",
    "prune_model",
    "register_family",
    "run_probe",
    "skeleton_search",
    "skip_search",
    "top_examples",
    "tune_prompt",
    "tune_prompts",
    "unregister_family",
]
