"""Prompt tuning and task heads: the task prompts every analysis needs."""

from neuronlens.prompts.heads import (
    Head,
    LinearHead,
    Verbalizer,
    class_logits,
    encode_task,
    label_word_id,
    make_head,
    render_texts,
)
from neuronlens.prompts.linear_probe import fit_linear_probe, pooled_features
from neuronlens.prompts.results import EvalResult, PromptResult, evaluate, init_prompt
from neuronlens.prompts.tuning import tune_prompt, tune_prompts

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
    "render_texts",
    "tune_prompt",
    "tune_prompts",
]
