"""Prompt tuning and task heads: the task prompts every analysis needs."""

from neuronlens.prompts.heads import Head, LinearHead, Verbalizer, label_word_id, make_head
from neuronlens.prompts.linear_probe import fit_linear_probe, pooled_features
from neuronlens.prompts.tuning import (
    EvalResult,
    PromptResult,
    class_logits,
    encode_task,
    evaluate,
    init_prompt,
    tune_prompt,
    tune_prompts,
)

__all__ = [
    "EvalResult",
    "Head",
    "LinearHead",
    "PromptResult",
    "Verbalizer",
    "class_logits",
    "encode_task",
    "evaluate",
    "fit_linear_probe",
    "init_prompt",
    "label_word_id",
    "make_head",
    "pooled_features",
    "tune_prompt",
    "tune_prompts",
]
