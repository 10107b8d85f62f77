"""SKELETON and SKIP: find how many FFN neurons can go within an accuracy margin.

SKELETON (Algorithm 1): from a tuned prompt with accuracy ``s``, score every target neuron
(attribution on ``n = 20`` examples by default), sort them over the whole model, then binary
search the kept ratio ``p`` in steps of 5 %: prune to the top-``p`` neurons, re-train the
prompt starting from the tuned one, accept when ``s - s' <= psi`` (psi = 1 point). The
smallest accepted model is returned with its accuracy, kept ratio and the search history.

SKIP: the prompt was tuned until the training loss converged; prune without re-training,
searching in 1 % steps on a small evaluation subset (< 10 % of the evaluation set).

The scoring method is a parameter (``attribution``, ``activation``, ``gradient``,
``random``), so SKELETON's comparison of neuron-selection methods can be reproduced.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import neuronlens.checks as checks
from neuronlens.errors import NeuronLensError
from neuronlens.models.model import NeuronModel
from neuronlens.neurons import NeuronScores
from neuronlens.plots import search_figure
from neuronlens.probes.attribution import attribute
from neuronlens.progress import tqdm
from neuronlens.prompts.results import PromptResult, evaluate
from neuronlens.prompts.tuning import tune_prompt
from neuronlens.pruning.flops import flop_ceiling
from neuronlens.pruning.prune import prune_model


@dataclass
class SearchStep:
    kept_ratio: float
    n_kept: int
    accuracy: float
    accepted: bool
    seconds: float


@dataclass
class SearchResult:
    """The smallest accepted pruned model, its prompt, and the search history."""

    model: NeuronModel
    prompt: PromptResult
    kept_ratio: float
    accuracy: float
    base_accuracy: float
    psi: float
    method: str
    scores: NeuronScores
    history: list[SearchStep] = field(default_factory=list)

    @property
    def removed_ratio(self) -> float:
        return 1.0 - self.kept_ratio

    def rows(self) -> list[dict]:
        return [vars(s) for s in self.history]

    def figure(self, seq_len: int = 128):
        """Accuracy vs FLOP-ceiling speed-up of every kept ratio the search tried."""
        steps = sorted(self.history, key=lambda s: s.kept_ratio)
        speedups = [flop_ceiling(self.model, s.kept_ratio, seq_len) for s in steps]
        return search_figure(steps, speedups, self.base_accuracy, self.psi, self.method)


def keep_top(model: NeuronModel, scores: NeuronScores, ratio: float) -> NeuronModel:
    """Prune ``model`` to the top ``ratio`` of its neurons by ``scores`` (over the whole model)."""
    keep = scores.top(percent=100.0 * ratio)
    return prune_model(model, keep, description=f"top {ratio:.0%} by {scores.method}")


def _search(
    model: NeuronModel,
    tuned: PromptResult,
    task,
    eval_data,
    scores: NeuronScores,
    *,
    step: float,
    psi: float,
    retrain: dict | None,
    train,
    validation,
    batch_size: int,
    progress: bool | None,
) -> SearchResult:
    if not 0 < checks.number("step", step) <= 0.5:
        raise NeuronLensError(f"step must be within (0, 0.5], got {step}")
    checks.number("psi", psi, low=0)  # accuracy points the pruned model may lose
    base = evaluate(model, tuned, eval_data, task=task, batch_size=batch_size).accuracy
    n_steps = round(1 / step)
    lo, hi = 0, n_steps  # kept ratio = index * step; hi (everything kept) is always acceptable
    best = (model, tuned, 1.0, base)
    history: list[SearchStep] = []
    bar = tqdm(
        total=math.ceil(math.log2(n_steps + 1)),
        desc=f"pruning search ({scores.method})",
        disable=not (progress if progress is not None else True),
        leave=False,
    )
    try:
        while lo < hi:
            mid = (lo + hi) // 2
            ratio = round(mid * step, 6)
            t0 = time.perf_counter()
            pruned = keep_top(model, scores, ratio)
            prompt = tuned
            if retrain is not None:
                prompt = retrain_prompt(
                    pruned, tuned, task, train=train, validation=validation, **retrain
                )
            acc = evaluate(pruned, prompt, eval_data, task=task, batch_size=batch_size).accuracy
            accepted = 100.0 * (base - acc) <= psi
            history.append(
                SearchStep(
                    ratio, pruned.pruning.n_kept, acc, accepted, round(time.perf_counter() - t0, 2)
                )
            )
            if accepted:
                hi = mid
                best = (pruned, prompt, ratio, acc)
            else:
                lo = mid + 1
            bar.update(1)
    finally:
        bar.close()
    pruned, prompt, ratio, acc = best
    return SearchResult(pruned, prompt, ratio, acc, base, psi, scores.method, scores, history)


def retrain_prompt(
    pruned: NeuronModel, tuned: PromptResult, task, *, train, validation=False, **kwargs
) -> PromptResult:
    """Re-train ``tuned`` (prompt and a copy of its head) on a pruned model, starting from it.

    ``kwargs`` go to :func:`~neuronlens.prompts.tune_prompt` (epochs, max_steps, lr, ...).
    """
    head = copy.deepcopy(tuned.head)
    head.requires_grad_(True)
    return tune_prompt(
        pruned,
        task,
        train=train,
        validation=validation,
        head=head,
        init=tuned.prompt,
        n_tokens=tuned.n_tokens,
        method="prefix" if tuned.is_prefix else "prompt",  # a P-tuned prompt is a prompt now
        seed=tuned.seed,
        progress=False,
        **kwargs,
    )


def skeleton_search(
    model: NeuronModel,
    tuned: PromptResult,
    task,
    *,
    train,
    eval_data,
    validation=False,
    method: str = "attribution",
    n_examples: int = 20,
    psi: float = 1.0,
    step: float = 0.05,
    retrain: dict | None = None,
    scores: NeuronScores | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool | None = None,
) -> SearchResult:
    """SKELETON: binary search of the kept ratio with prompt re-training after each prune.

    Args:
        tuned: the prompt tuned on the unpruned ``model`` (accuracy ``s`` on ``eval_data``).
        train: training split (attribution examples and prompt re-training).
        eval_data: the split on which ``s - s' <= psi`` (points) is checked.
        validation: early-stopping split for re-training (default ``False``: none, the
            re-training runs its fixed number of steps).
        method: neuron scores: attribution, activation, gradient or random.
        retrain: keyword arguments for :func:`~neuronlens.prompts.tune_prompt` during the
            search (default ``{"epochs": 1, "lr": 1e-2}``); ``{}`` uses its defaults.
        scores: precomputed neuron scores (skips the attribution step).

    Examples:
        >>> res = skeleton_search(model, tuned, task, train=train, eval_data=val, psi=1.0)  # doctest: +SKIP
        >>> res.kept_ratio, res.accuracy, res.figure()  # doctest: +SKIP
    """
    if scores is None:
        scores = attribute(
            model, tuned, task, train, method=method, n=n_examples, seed=seed, progress=False
        )
    retrain = {"epochs": 1, "lr": 1e-2} if retrain is None else retrain
    return _search(
        model,
        tuned,
        task,
        eval_data,
        scores,
        step=step,
        psi=psi,
        retrain=retrain,
        train=train,
        validation=validation,
        batch_size=batch_size,
        progress=progress,
    )


def skip_search(
    model: NeuronModel,
    tuned: PromptResult,
    task,
    *,
    train,
    eval_data,
    method: str = "attribution",
    n_examples: int = 20,
    psi: float = 0.2,
    step: float = 0.01,
    eval_fraction: float = 0.08,
    scores: NeuronScores | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool | None = None,
) -> SearchResult:
    """SKIP: prune a converged prompt (or prefix) without re-training, 1 % steps, on a small
    subset (``eval_fraction`` < 10 %) of ``eval_data``, within ``psi`` points (0.2 in the
    paper)."""
    if not 0 < eval_fraction < 0.1:
        raise NeuronLensError(
            f"SKIP searches on a subset under 10 % of the eval set, got {eval_fraction}"
        )
    subset = eval_data.subset(max(1, round(eval_fraction * len(eval_data))), seed=seed)
    if scores is None:
        scores = attribute(
            model, tuned, task, train, method=method, n=n_examples, seed=seed, progress=False
        )
    return _search(
        model,
        tuned,
        task,
        subset,
        scores,
        step=step,
        psi=psi,
        retrain=None,
        train=train,
        validation=False,
        batch_size=batch_size,
        progress=progress,
    )


def interleaved_latency(
    models: dict[str, NeuronModel], enc, *, prompt=None, repeats: int = 5
) -> dict[str, float]:
    """Median seconds of each model's classification forward (``hidden_states``) on ``enc``,
    the models timed in alternating order within each repeat (fair on a noisy machine)."""
    import statistics

    import torch

    times: dict[str, list[float]] = {k: [] for k in models}
    keys = list(models)
    with torch.no_grad():
        for m in models.values():  # warm-up
            m.hidden_states(enc, prompt=prompt)
        for r in range(repeats):
            for k in keys if r % 2 == 0 else keys[::-1]:
                t0 = time.perf_counter()
                models[k].hidden_states(enc, prompt=prompt)
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}
