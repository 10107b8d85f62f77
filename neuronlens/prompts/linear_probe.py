"""The frozen linear probe: the no-prompt baseline of a linear head, fitted to convergence.

A linear probe reads the frozen model's mean-pooled last hidden state and fits
``Linear(d_model, n_classes)`` by L2-regularised logistic regression. The features are computed
once (one forward pass over the data, no gradients through the model), then L-BFGS solves the
convex problem to its optimum for each weight decay; the weight decay with the best validation
accuracy wins. This is a stronger baseline than training the head by AdamW
(``tune_prompt(..., n_tokens=0)``), in about the same time (measurements: docs/results.md).

    probe = fit_linear_probe(model, get_task("sst2"), train=train)
    evaluate(model, probe, get_task("sst2").load("dev")).accuracy
    tuned = tune_prompt(model, task, head=probe.head, n_tokens=20)   # a prompt against the probe
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from neuronlens.errors import NeuronLensError, NonFiniteActivationError
from neuronlens.models.model import NeuronModel
from neuronlens.models.placement import MASTER_DTYPE, dtype_name
from neuronlens.progress import tqdm
from neuronlens.prompts.heads import LinearHead, encode_task
from neuronlens.prompts.results import PromptResult
from neuronlens.prompts.tuning import training_splits

DEFAULT_WEIGHT_DECAYS = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)


def pooled_features(
    model: NeuronModel,
    head: LinearHead,
    task,
    data,
    *,
    batch_size: int = 64,
    max_length: int | None = 128,
    progress: bool | None = None,
) -> Tensor:
    """``[N, d_model]`` pooled last hidden states of ``data`` (no prompt), as ``head`` reads them."""
    if not isinstance(head, LinearHead):
        raise NeuronLensError(
            f"pooled features are what a LinearHead reads; got {type(head).__name__}: pass "
            "LinearHead(model.d_model, task.num_labels)"
        )
    if batch_size < 1:
        raise NeuronLensError(f"batch_size must be >= 1, got {batch_size}")
    enc = encode_task(model, head, task, data, max_length=max_length)
    starts = range(0, len(enc), batch_size)
    out = []
    with torch.no_grad():
        for start in tqdm(
            starts,
            desc=f"probe features {task.name}",
            disable=not (progress if progress is not None else len(starts) >= 20),
            leave=False,
        ):
            rows = torch.arange(start, min(start + batch_size, len(enc)), device=model.device)
            out.append(head.pooled(model, enc[rows], None).double().cpu())
    feats = torch.cat(out)
    bad = ~torch.isfinite(feats).all(1)
    if bool(bad.any()):
        raise NonFiniteActivationError(
            f"{int(bad.sum())} of {len(feats)} examples of task {task.name!r} give NaN or "
            f"infinite hidden states in {model.name} (first: example {int(bad.nonzero()[0])}): "
            "check the model's dtype and weights"
        )
    return feats


def logistic_objective(linear: torch.nn.Linear, x: Tensor, y: Tensor, weight_decay: float):
    """Mean cross-entropy plus ``weight_decay * ||W||^2`` (the bias is not penalised)."""
    loss = torch.nn.functional.cross_entropy(linear(x), y)
    return loss + weight_decay * linear.weight.pow(2).sum()


def _fit(x: Tensor, y: Tensor, n_classes: int, weight_decay: float, max_iter: int):
    linear = torch.nn.Linear(x.shape[1], n_classes, dtype=x.dtype)
    with torch.no_grad():  # the problem is convex: start at 0, deterministically
        linear.weight.zero_()
        linear.bias.zero_()
    opt = torch.optim.LBFGS(
        linear.parameters(),
        max_iter=max_iter,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = logistic_objective(linear, x, y, weight_decay)
        loss.backward()
        return loss

    opt.step(closure)
    n_iter = int(opt.state[linear.weight].get("n_iter", 0))  # LBFGS keeps its state there
    return linear.requires_grad_(False), n_iter


def _accuracy(linear: torch.nn.Linear, x: Tensor, y: Tensor) -> float:
    return float((linear(x).argmax(-1) == y).double().mean())


def _sweep(x, y, xv, yv, n_classes: int, decays, max_iter: int):
    """Fit one probe per weight decay; ``((linear, val accuracy) of the best, history)``:
    the best validation accuracy wins, on a tie the larger weight decay."""
    best, history = None, []
    for wd in decays:
        linear, n_iter = _fit(x, y, n_classes, wd, max_iter)
        val = None if xv is None else _accuracy(linear, xv, yv)
        history.append(
            {
                "step": n_iter,
                "weight_decay": wd,
                "train_loss": float(logistic_objective(linear, x, y, 0.0)),
                "train_accuracy": _accuracy(linear, x, y),
                "val_accuracy": val,
            }
        )
        if best is None or (val is not None and val >= best[1]):
            best = (linear, val)
    return best, history


def fit_linear_probe(
    model: NeuronModel,
    task,
    *,
    train=None,
    validation=None,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    pool: str = "input",
    max_iter: int = 500,
    batch_size: int = 64,
    max_length: int | None = 128,
    data_dir=None,
    val_limit: int | None = 500,
    progress: bool | None = None,
) -> PromptResult:
    """Fit the frozen linear probe of ``task`` on ``model`` (no soft prompt).

    Args:
        train, validation: task splits, defaults as in :func:`tune_prompt`
            (``validation=False``: none; then ``weight_decays`` must hold one value).
        weight_decays: L2 penalties tried; the one with the best validation accuracy is kept
            (on a tie, the larger one).
        pool: ``"input"`` or ``"all"``, as in :class:`LinearHead` (no prompt: the same).
        max_iter: L-BFGS iterations per weight decay.

    Returns a :class:`PromptResult` with an empty prompt (``n_tokens == 0``) and the frozen
    :class:`LinearHead`, ready for :func:`evaluate`, ``save`` and ``tune_prompt(head=...)``.
    ``history`` has one entry per weight decay: ``step`` (L-BFGS iterations),
    ``weight_decay``, ``train_loss``, ``train_accuracy``, ``val_accuracy``.
    """
    decays = sorted(float(w) for w in weight_decays)
    if not decays or any(not w >= 0 for w in decays):
        raise NeuronLensError(f"weight_decays must be one or more values >= 0, got {decays}")
    if max_iter < 1:
        raise NeuronLensError(f"max_iter (L-BFGS iterations) must be >= 1, got {max_iter}")
    task, train, validation = training_splits(task, train, validation, data_dir, val_limit)
    if validation is None and len(decays) > 1:
        raise NeuronLensError(
            f"choosing among weight decays {decays} needs a validation split; pass "
            "validation=... or a single weight decay, e.g. weight_decays=(1e-3,)"
        )
    head = LinearHead(model.d_model, task.num_labels, pool)

    def feats(data):
        return pooled_features(
            model, head, task, data, batch_size=batch_size, max_length=max_length,
            progress=progress,
        )  # fmt: skip

    x, y = feats(train), torch.tensor(train.labels)
    xv = yv = None
    if validation is not None:
        xv, yv = feats(validation), torch.tensor(validation.labels)
    best, history = _sweep(x, y, xv, yv, task.num_labels, decays, max_iter)
    with torch.no_grad():
        head.linear.weight.copy_(best[0].weight)
        head.linear.bias.copy_(best[0].bias)
    head = head.to(model.device, MASTER_DTYPE).requires_grad_(False)
    return PromptResult(
        prompt=torch.zeros(0, model.d_model, device=model.device, dtype=model.dtype),
        head=head,
        task=task.name,
        label_space=task.label_space,
        label_names=tuple(task.label_names),
        seed=0,
        model_name=model.name,
        model_kind=model.kind.value,
        model_dtype=dtype_name(model.dtype),
        val_accuracy=best[1],
        history=history,
        train_size=len(train),
    )
