"""Ablation studies: suppression curves, cross suppression, task specificity, adversarial
analysis, prompt transferability, distributions (see :mod:`neuronlens.analysis.studies`)."""

from neuronlens.analysis.studies import (
    Ablation,
    AdversarialAnalysis,
    CrossSuppression,
    Distributions,
    SuppressionCurve,
    TaskSpecificity,
    Transferability,
    adversarial_analysis,
    cross_suppression,
    distributions,
    prompt_activation_stats,
    suppression_curve,
    task_specificity,
    transferability,
)

__all__ = [
    "Ablation",
    "AdversarialAnalysis",
    "CrossSuppression",
    "Distributions",
    "SuppressionCurve",
    "TaskSpecificity",
    "Transferability",
    "adversarial_analysis",
    "cross_suppression",
    "distributions",
    "prompt_activation_stats",
    "suppression_curve",
    "task_specificity",
    "transferability",
]
