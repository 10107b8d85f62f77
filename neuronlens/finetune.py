"""Full fine-tuning: the comparison row of the SKELETON and SKIP papers' tables.

:func:`fine_tune` trains every weight of a copy of the model together with its head (a
verbalizer reads the model's own LM head, which then trains too; a linear head trains with
``head_lr``), with the same batches, schedule, validation and early stopping as
:func:`~neuronlens.prompts.tune_prompt`; no soft prompt. The input model is left as it is;
the fine-tuned copy carries its own name, so prompts of the original do not load into it by
mistake. Dropout stays off (the copy trains in eval mode, as prompts do).

    tuned_model, result = fine_tune(model, task, train=train, epochs=2, weights_lr=2e-5)
    evaluate(tuned_model, result, dev).accuracy
"""

from __future__ import annotations

import torch

import neuronlens.checks as checks
from neuronlens.errors import NeuronLensError
from neuronlens.models.loading import load_model
from neuronlens.models.model import NeuronModel
from neuronlens.models.placement import dtype_name
from neuronlens.prompts.heads import make_head, promptless_readout
from neuronlens.prompts.results import PromptResult
from neuronlens.prompts.tuning import TrainingSettings, run_training, training_splits
from neuronlens.pruning.surgery import plain_hf_model


def copy_model(model: NeuronModel, name: str | None = None) -> NeuronModel:
    """An independent copy of ``model`` (cloned weights, its own bridge and hooks)."""
    hf = plain_hf_model(model)
    with torch.no_grad():
        copy = load_model(
            hf, model.tokenizer, device=model.device, name=name or model.name,
            has_lm_head=model.has_lm_head,
        )  # fmt: skip
    copy.pruning = model.pruning
    return copy


def fine_tune(
    model: NeuronModel,
    task,
    *,
    train=None,
    validation=None,
    head="auto",
    readout: str = "auto",
    weights_lr: float = 2e-5,
    seed: int = 0,
    name: str | None = None,
    settings: TrainingSettings | None = None,
    data_dir=None,
    progress: bool | None = None,
    **training,
) -> tuple[NeuronModel, PromptResult]:
    """Fine-tune a copy of ``model`` and its head on ``task``.

    Returns ``(fine-tuned model, result)``: the result is a :class:`PromptResult` with an
    empty prompt and the trained head, for :func:`~neuronlens.prompts.evaluate` and every
    probe on the fine-tuned model. ``weights_lr`` is the AdamW learning rate of the model's
    weights; ``training`` / ``settings`` as in :func:`~neuronlens.prompts.tune_prompt`
    (``lr`` is unused: there is no prompt). ``readout="auto"`` picks a readout that needs no
    prompt (mask, last token, pooled, T5's decoder).

    Examples:
        >>> ft, res = fine_tune(model, task, train=train, epochs=1)  # doctest: +SKIP
        >>> evaluate(ft, res, dev).accuracy                          # doctest: +SKIP
    """
    checks.number("weights_lr", weights_lr, low=0, finite=True)
    if model.dtype != torch.float32:
        raise NeuronLensError(
            f"{model.name} runs in {dtype_name(model.dtype)}: fine-tuning "
            "updates the model's own weights, and in half precision AdamW would update them "
            "without float32 master copies (updates below their precision are lost). Load "
            "the model with dtype=torch.float32 to fine-tune it; soft prompts, prefixes and "
            "heads do train on a half-precision model (as float32 master weights)"
        )
    s = TrainingSettings.of(settings, **training)
    task, train, validation = training_splits(task, train, validation, data_dir, s.val_limit)
    tuned = copy_model(model, name or f"{model.name} fine-tuned on {task.name}")
    readout = promptless_readout(tuned, head, readout)  # a fine-tuned model has no prompt
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # linear-head initialisation
        hd = make_head(tuned, head, task, readout).to(tuned.device)
    if hd.placement(tuned).answer == "prompt_first":
        raise NeuronLensError(
            f"readout {hd.readout!r} reads the answer at a soft prompt, and fine-tuning has "
            "none: use readout='mask' (or 'pool' for a linear head)"
        )
    weights = [p for p in tuned.hf_model.parameters()]
    for p in weights:
        p.requires_grad_(True)
    start = torch.zeros(0, tuned.d_model, device=tuned.device, dtype=tuned.dtype)
    result = run_training(tuned, task, hd, start, s, train, validation, seed=seed,
                          progress=progress, weights=weights, weights_lr=weights_lr)  # fmt: skip
    return tuned, result
