"""Ablation studies as library calls (robustness paper §4; mission §4).

Each returns a result object with ``rows()`` (a table as a list of dicts), ``to_markdown()``
and ``figure()`` (a Plotly figure; ``figure().write_html(path)`` saves it standalone).

* :func:`suppression_curve` - accuracy while switching off the top 0-15 % neurons (per
  layer by default) vs the same per-layer counts of random neurons (several seeded repeats,
  mean and spread), zeroed, mean-replaced or noised (:class:`Ablation`);
* :func:`cross_suppression` - the neuron set of dataset A switched off while evaluating B;
* :func:`task_specificity` - Spearman matrix of neuron scores between datasets (per layer,
  then averaged; per-layer p-values kept), and its z-score normalised version;
* :func:`adversarial_analysis` - predictivity on an adversarial set with the clean baselines,
  and its correlation with the clean predictivity;
* :func:`transferability` - accuracy of each task's prompt on each task, absolute and
  relative to the target task's own prompt;
* :func:`distributions` - per dataset, predictivity and neuron-accuracy summaries next to
  the model's accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

import neuronlens.checks as checks
from neuronlens.capture import CaptureData
from neuronlens.errors import NeuronLensError, ShapeMismatchError
from neuronlens.interventions import (
    ActivationStats,
    Intervention,
    Noise,
    Replace,
    Zero,
    activation_stats,
)
from neuronlens.models.families import ModelKind
from neuronlens.models.model import NeuronModel
from neuronlens.neurons import NeuronScores, NeuronSet
from neuronlens.plots import (
    distributions_figure,
    matrix_figure,
    sample_sd,
    scatter_figure,
    suppression_figure,
)
from neuronlens.positions import warn_if_scores_elsewhere
from neuronlens.probes.predictivity import predictivity
from neuronlens.progress import tqdm
from neuronlens.prompts.heads import render_texts
from neuronlens.prompts.results import PromptResult, evaluate
from neuronlens.tasks import get_task


def _markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


class _Table:
    def rows(self) -> list[dict]:
        raise NotImplementedError

    def to_markdown(self) -> str:
        return _markdown(self.rows())


# ---------------------------------------------------------------------------- suppression


ABLATIONS = ("zero", "mean", "noise")


@dataclass(frozen=True)
class Ablation:
    """How a study switches a neuron set off.

    * ``"zero"`` - suppression (the robustness paper; the original code of both its
      implementations);
    * ``"mean"`` - each neuron replaced by its mean activation over every position of the
      training data, run with the prompt (``stats``, from :func:`prompt_activation_stats`);
    * ``"noise"`` - gaussian noise of absolute ``std`` (default 0.1), one draw per example and
      neuron added at every position (``per="example"``; the original skill-neuron code) or
      a fresh draw per token (``per="token"``); ``relative=True``: ``std`` times each
      neuron's own standard deviation (``stats.std``), comparable across models.

    ``positions``: ``"all"`` (as both original implementations), ``"prompt"`` or ``"input"``.
    """

    kind: str = "zero"
    std: float = 0.1
    per: str = "example"
    positions: str = "all"
    relative: bool = False
    stats: ActivationStats | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in ABLATIONS:
            raise NeuronLensError(f"ablation must be one of {ABLATIONS}, got {self.kind!r}")
        if (self.kind == "mean" or self.relative) and self.stats is None:
            raise NeuronLensError(
                f"a {'mean' if self.kind == 'mean' else 'relative noise'} ablation needs the "
                "activation statistics: Ablation(..., stats=prompt_activation_stats(model, "
                "tuned, task, train)), or pass train= to the study"
            )

    def __call__(self, neurons: NeuronSet, seed: int = 0) -> Intervention:
        """The intervention that switches ``neurons`` off (``seed``: the noise draw)."""
        if self.kind == "zero":
            return Zero(neurons, self.positions)
        if self.kind == "mean":
            return Replace(neurons, self.positions, values=self.stats.mean)
        scale = self.stats.std if self.relative else None
        return Noise(neurons, self.positions, std=self.std, scale=scale, seed=seed, per=self.per)

    def describe(self) -> str:
        if self.kind == "noise":
            size = f"{self.std} x the neuron's std" if self.relative else f"{self.std}"
            return f"noise (std {size}, per {self.per})"
        return {"zero": "zeroed", "mean": "mean-replaced"}[self.kind]


def prompt_activation_stats(
    model: NeuronModel,
    tuned: PromptResult,
    task,
    data,
    *,
    positions=None,
    batch_size: int = 32,
    max_length: int | None = 256,
    progress: bool | None = None,
) -> ActivationStats:
    """Per-neuron mean and std over every non-padding position (or ``positions``) of
    ``data`` run with ``tuned``'s prompt, placed and read as its head does: the values of a
    mean ablation (the original skill-neuron code's train mean over positions)."""
    if len(data) == 0:
        raise NeuronLensError("prompt_activation_stats got an empty split")
    tuned.head.check_model(model)
    sites = model.sites
    if model.kind is ModelKind.ENCODER_DECODER and tuned.head.kind == "linear":
        sites = [s for s in sites if s.stack == "encoder_blocks"]

    def fwd(enc, prompt, grads):
        return tuned.head.class_logits(model, enc, prompt)

    texts = CaptureData(texts=render_texts(model, tuned.head, task, data), max_length=max_length)
    return activation_stats(
        model,
        texts,
        prompt=tuned.prompt if tuned.n_tokens else None,
        sites=sites,
        positions=positions,
        forward=fwd,
        batch_size=batch_size,
        progress=progress,
    )


def _ablation(ablation, model, tuned, task, train) -> Ablation:
    """An :class:`Ablation` from a name or object; a mean ablation gets its stats from train."""
    if isinstance(ablation, Ablation):
        return ablation
    if ablation == "mean":
        if train is None:
            raise NeuronLensError(
                "ablation='mean' replaces neurons by their mean activation on training data: "
                "pass train= (a task split), or an Ablation('mean', stats=...)"
            )
        return Ablation("mean", stats=prompt_activation_stats(model, tuned, task, train))
    return Ablation(ablation)


@dataclass
class SuppressionCurve(_Table):
    """Accuracy vs percent of neurons switched off: top neurons and random controls."""

    percents: list[float]
    top: list[float]
    random: list[list[float]]  # [percent][repeat]
    counts: list[int]
    method: str
    dataset: str
    per_layer: bool
    ablation: str = "zeroed"

    def gaps(self) -> list[float | None]:
        """Per level: (random mean - top) in random standard deviations (the sample sd of the
        random controls); ``None`` where the controls do not spread (one control, or all
        equal), for which :meth:`gap_notes` says why."""
        out = []
        for t, r in zip(self.top, self.random, strict=True):
            sd = sample_sd(r)
            out.append((float(np.mean(r)) - t) / sd if sd > 0 else None)
        return out

    def gap_notes(self) -> list[str]:
        """Per level, why there is no gap in standard deviations (``""`` where there is)."""
        out = []
        for t, r in zip(self.top, self.random, strict=True):
            if sample_sd(r) > 0:
                out.append("")
                continue
            side = {1: "top lower", -1: "top higher", 0: "top equal"}[int(np.sign(np.mean(r) - t))]
            spread = "1 random control" if len(r) < 2 else f"the {len(r)} random controls are equal"
            out.append(f"no spread: {spread} ({side})")
        return out

    def rows(self) -> list[dict]:
        """One row per level; ``gap_sd`` is ``None`` where it is undefined (``gap_note``)."""
        return [
            {
                "percent": p,
                "neurons": c,
                "acc_top": t,
                "acc_random_mean": float(np.mean(r)),
                "acc_random_std": sample_sd(r),
                "gap_sd": g,
                "gap_note": n,
            }
            for p, c, t, r, g, n in zip(
                self.percents,
                self.counts,
                self.top,
                self.random,
                self.gaps(),
                self.gap_notes(),
                strict=True,
            )
        ]

    def figure(self):
        return suppression_figure(
            self.percents,
            self.top,
            self.random,
            method=self.method,
            dataset=self.dataset,
            per_layer=self.per_layer,
            ablation=self.ablation,
        )


def suppression_curve(
    model: NeuronModel,
    tuned: PromptResult,
    data,
    scores: NeuronScores,
    *,
    task=None,
    percents: Sequence[float] = (0, 1, 3, 5, 7, 10, 15),
    per_layer: bool = True,
    random_repeats: int = 3,
    seed: int = 0,
    ablation: str | Ablation = "zero",
    train=None,
    positions: str | None = None,
    batch_size: int = 64,
    progress: bool | None = None,
) -> SuppressionCurve:
    """Switch off the top ``p`` % neurons by ``scores`` and the same per-layer counts of
    random neurons (``random_repeats`` seeds), and evaluate ``tuned`` on ``data``.

    ``per_layer=True`` (default) takes the top ``p`` % of every layer, as both original
    implementations of the robustness paper do (Skill-Neuron, robust-neurons);
    ``per_layer=False`` the top ``p`` % of the whole model (SKELETON / SKIP order neurons
    this way for pruning). ``ablation``: ``"zero"``, ``"mean"`` (needs ``train``), ``"noise"``
    or an :class:`Ablation`; ``positions`` overrides the ablation's (default every position).

    Examples:
        >>> curve = suppression_curve(model, tuned, dev, skill, percents=(0, 1, 5))  # doctest: +SKIP
        >>> curve.to_markdown(); curve.figure().write_html("curve.html")  # doctest: +SKIP
    """
    checks.integer("random_repeats", random_repeats, minimum=1)
    if not percents:
        raise NeuronLensError("percents is empty: give the levels to switch off, e.g. (1, 5, 10)")
    task = task or get_task(data.task)
    if scores.method == "predictivity":
        warn_if_scores_elsewhere(scores.meta, tuned.head, "suppression_curve's scores")
    abl = _ablation(ablation, model, tuned, task, train)
    if positions is not None:
        abl = replace(abl, positions=positions)
    top, rnd, counts = [], [], []
    bar = tqdm(
        percents,
        desc=f"suppression curve ({abl.describe()})",
        disable=not (progress if progress is not None else len(percents) > 3),
        leave=False,
    )

    def accuracy(iv: Intervention) -> float:
        return evaluate(
            model, tuned, data, task=task, batch_size=batch_size, interventions=[iv]
        ).accuracy

    for p in bar:
        nset = scores.top(percent=p, per_layer=per_layer)
        counts.append(nset.count)
        top.append(accuracy(abl(nset, seed)))
        rnd.append(
            [accuracy(abl(nset.random_control(seed + r), seed)) for r in range(random_repeats)]
        )
    return SuppressionCurve(
        list(percents),
        top,
        rnd,
        counts,
        scores.method,
        getattr(data, "task", "data"),
        per_layer,
        abl.describe(),
    )


# ---------------------------------------------------------------------------- cross suppression


@dataclass
class CrossSuppression(_Table):
    """``accuracy[a][b]``: accuracy on dataset ``b`` with the neuron set of ``a`` switched
    off (``a = "none"``: nothing switched off)."""

    accuracy: dict[str, dict[str, float]]
    ablation: str = "zeroed"

    def rows(self) -> list[dict]:
        return [
            {"neurons_of": a, **{f"eval_{b}": v for b, v in row.items()}}
            for a, row in self.accuracy.items()
        ]

    def figure(self):
        return matrix_figure(
            self.accuracy,
            f"Cross suppression ({self.ablation}): accuracy",
            "evaluated on",
            "neurons switched off from",
        )


def cross_suppression(
    model: NeuronModel,
    tuned: PromptResult,
    datasets: Mapping[str, object],
    neuron_sets: Mapping[str, NeuronSet],
    *,
    task=None,
    ablation: str | Ablation = "zero",
    train=None,
    positions: str | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
) -> CrossSuppression:
    """Evaluate every dataset with every neuron set switched off (and with none);
    ``ablation`` as in :func:`suppression_curve`."""
    if not datasets or not neuron_sets:
        raise NeuronLensError("cross_suppression needs at least one dataset and one neuron set")
    first = next(iter(datasets.values()))
    task = task or get_task(first.task)
    abl = _ablation(ablation, model, tuned, task, train)
    if positions is not None:
        abl = replace(abl, positions=positions)
    bar = tqdm(total=(len(neuron_sets) + 1) * len(datasets), desc="cross suppression",
               disable=not progress)  # fmt: skip
    acc: dict[str, dict[str, float]] = {}
    for a, nset in {"none": None, **neuron_sets}.items():
        acc[a] = {}
        for b, data in datasets.items():
            off = [] if nset is None else [abl(nset, seed)]
            acc[a][b] = evaluate(
                model, tuned, data, task=task, batch_size=batch_size, interventions=off
            ).accuracy
            bar.update()
    bar.close()
    return CrossSuppression(acc, abl.describe())


# ---------------------------------------------------------------------------- specificity


@dataclass
class TaskSpecificity(_Table):
    """Spearman rho between datasets' neuron scores: per layer, averaged over layers.

    ``rho[i][j]`` is the layer-averaged rho; ``per_layer_rho`` / ``per_layer_p`` are
    ``[n, n, layers]`` arrays (p-values are per layer; they are never averaged).
    """

    names: list[str]
    rho: np.ndarray
    per_layer_rho: np.ndarray
    per_layer_p: np.ndarray
    layers: list[str]

    @property
    def zscore(self) -> np.ndarray:
        """The rho matrix z-score normalised over its off-diagonal entries."""
        off = ~np.eye(len(self.names), dtype=bool)
        vals = self.rho[off]
        std = vals.std() if vals.size > 1 else 0.0
        return (self.rho - vals.mean()) / (std if std > 1e-12 else 1.0)

    def rows(self) -> list[dict]:
        out = []
        for i, a in enumerate(self.names):
            for j, b in enumerate(self.names):
                out.append(
                    {
                        "a": a,
                        "b": b,
                        "rho": float(self.rho[i, j]),
                        "z": float(self.zscore[i, j]),
                        "layers_p_below_0.05": int((self.per_layer_p[i, j] < 0.05).sum()),
                    }
                )
        return out

    def figure(self, z: bool = False):
        m = self.zscore if z else self.rho
        data = {
            a: {b: float(m[i, j]) for j, b in enumerate(self.names)}
            for i, a in enumerate(self.names)
        }
        title = "Task specificity (Spearman" + (", z-scored)" if z else ")")
        return matrix_figure(data, title, "", "")


def task_specificity(scores: Mapping[str, NeuronScores]) -> TaskSpecificity:
    """Spearman correlations of neuron scores between every pair of datasets.

    Examples:
        >>> spec = task_specificity({"sst2": skill, "adv": adv_skill})  # doctest: +SKIP
        >>> spec.rho, spec.zscore, spec.figure(z=True)  # doctest: +SKIP
    """
    names = list(scores)
    if len(names) < 2:
        raise NeuronLensError("task specificity needs scores of at least two datasets")
    first = scores[names[0]]
    for n in names[1:]:
        if scores[n].widths != first.widths:
            raise ShapeMismatchError(
                f"scores of {n!r} cover other sites than those of {names[0]!r}"
            )
    layers = [s.name for s in first.sites]
    k = len(names)
    pr = np.zeros((k, k, len(layers)))
    pp = np.zeros((k, k, len(layers)))
    for i in range(k):
        for j in range(i, k):
            res = scores[names[i]].spearman(scores[names[j]])
            pr[i, j] = pr[j, i] = [res.rho[s] for s in layers]
            pp[i, j] = pp[j, i] = [res.p_value[s] for s in layers]
    return TaskSpecificity(names, pr.mean(-1), pr, pp, layers)


# ---------------------------------------------------------------------------- adversarial


@dataclass
class AdversarialAnalysis(_Table):
    """Clean and adversarial predictivity (same clean baselines) and their correlation."""

    clean: NeuronScores
    adversarial: NeuronScores
    spearman: float
    top_percent: float

    def rows(self) -> list[dict]:
        top = self.clean.top(percent=self.top_percent)
        out = []
        for s in self.clean.sites:
            idx = top.indices[s.name]
            row = {
                "site": s.name,
                "clean_mean": float(self.clean[s.name].mean()),
                "adv_mean": float(self.adversarial[s.name].mean()),
                "clean_max": float(self.clean[s.name].max()),
                "adv_max": float(self.adversarial[s.name].max()),
                "top_neurons": int(idx.numel()),
                "top_clean": float(self.clean[s.name][idx].mean()) if idx.numel() else float("nan"),
                "top_adv": float(self.adversarial[s.name][idx].mean())
                if idx.numel()
                else float("nan"),
            }
            out.append(row)
        return out

    def figure(self):
        return scatter_figure(
            self.clean.flat().numpy(),
            self.adversarial.flat().numpy(),
            f"Predictivity: clean vs adversarial (Spearman {self.spearman:.3f})",
            "clean",
            "adversarial",
        )


def adversarial_analysis(
    model: NeuronModel,
    prompts,
    task,
    train,
    dev,
    adversarial_dev,
    *,
    positions=None,
    one_vs_rest: int | None = None,
    top_percent: float = 1.0,
    batch_size: int = 32,
    progress: bool | None = None,
) -> AdversarialAnalysis:
    """Predictivity on ``dev`` (baselines from ``train``) and on ``adversarial_dev`` with the
    same clean baselines, at ``positions`` (as :func:`~neuronlens.probes.predictivity`);
    Spearman (per layer, averaged) between the two."""
    kw = dict(positions=positions, one_vs_rest=one_vs_rest, batch_size=batch_size,
              progress=progress)  # fmt: skip
    clean = predictivity(model, prompts, task, dev, train=train, **kw)
    adv = predictivity(model, prompts, task, adversarial_dev, baselines=clean, **kw)
    return AdversarialAnalysis(clean, adv, clean.spearman(adv).mean, top_percent)


# ---------------------------------------------------------------------------- transfer


@dataclass
class Transferability(_Table):
    """``absolute[src][tgt]``: accuracy of ``src``'s prompt on ``tgt``; ``relative``: divided
    by ``tgt``'s own prompt's accuracy (when ``tgt`` has a prompt)."""

    absolute: dict[str, dict[str, float]]
    relative: dict[str, dict[str, float]] = field(default_factory=dict)

    def rows(self) -> list[dict]:
        return [
            {"prompt_of": s, **{f"on_{t}": v for t, v in row.items()}}
            for s, row in self.absolute.items()
        ]

    def figure(self, relative: bool = False):
        data = self.relative if relative else self.absolute
        title = "Prompt transferability" + (" (relative)" if relative else "")
        return matrix_figure(data, title, "evaluated on", "prompt of")


def transferability(
    model: NeuronModel,
    prompts: Mapping[str, PromptResult],
    targets: Mapping[str, tuple[object, object]],
    *,
    batch_size: int = 64,
    known: Mapping[str, Mapping[str, float]] | None = None,
    progress: bool = True,
) -> Transferability:
    """Accuracy of each prompt on each target ``(task, data)`` of the same label space.

    ``known[src][tgt]``: accuracies already measured (e.g. each prompt on its own task's eval
    data), taken as they are instead of evaluating again."""
    if not prompts or not targets:
        raise NeuronLensError("transferability needs at least one prompt and one target")
    known = known or {}
    for src, row in known.items():
        if src not in prompts or not set(row) <= set(targets):
            raise NeuronLensError(
                f"known accuracies name prompt {src!r} and targets {sorted(row)}; "
                f"the prompts are {sorted(prompts)} and the targets {sorted(targets)}"
            )
    pairs = [(src, tgt) for src, pr in prompts.items() for tgt, (task, _) in targets.items()
             if task.label_space == pr.label_space]  # fmt: skip
    todo = [(s, t) for s, t in pairs if t not in known.get(s, {})]
    bar = tqdm(total=len(todo), desc="transferability", disable=not progress or not todo)
    absolute: dict[str, dict[str, float]] = {src: {} for src in prompts}
    for src, tgt in pairs:
        if tgt in known.get(src, {}):
            absolute[src][tgt] = float(known[src][tgt])
            continue
        task, data = targets[tgt]
        absolute[src][tgt] = evaluate(
            model, prompts[src], data, task=task, batch_size=batch_size
        ).accuracy
        bar.update()
    bar.close()
    relative = {
        src: {
            t: v / absolute[t][t]
            for t, v in row.items()
            if t in absolute and t in absolute[t] and absolute[t][t] > 0
        }
        for src, row in absolute.items()
    }
    return Transferability(absolute, relative)


# ---------------------------------------------------------------------------- distributions


@dataclass
class Distributions(_Table):
    """Per dataset: predictivity and neuron-accuracy quartiles, and the model's accuracy."""

    scores: dict[str, NeuronScores]
    model_accuracy: dict[str, float]

    def rows(self) -> list[dict]:
        out = []
        for name, sc in self.scores.items():
            pred = sc.flat().numpy()
            acc = _neuron_accuracy(sc) if "accuracy" in sc.extra else np.full(1, np.nan)
            q = np.percentile(pred, [25, 50, 75])
            out.append(
                {
                    "dataset": name,
                    "model_accuracy": self.model_accuracy.get(name, float("nan")),
                    "pred_q1": float(q[0]),
                    "pred_median": float(q[1]),
                    "pred_q3": float(q[2]),
                    "pred_max": float(pred.max()),
                    "neuron_acc_mean": float(np.nanmean(acc)),
                    "neuron_acc_min": float(np.nanmin(acc)),
                    "neuron_acc_max": float(np.nanmax(acc)),
                }
            )
        return out

    def figure(self):
        pred = {n: sc.flat().numpy() for n, sc in self.scores.items()}
        acc = {n: _neuron_accuracy(sc) for n, sc in self.scores.items() if "accuracy" in sc.extra}
        return distributions_figure(self.model_accuracy, pred, acc)


def _neuron_accuracy(sc: NeuronScores) -> np.ndarray:
    """Every neuron's signed accuracy (``scores.extra["accuracy"]``), sites in order."""
    return np.concatenate([sc.extra["accuracy"][s.name].numpy() for s in sc.sites])


def distributions(
    scores: Mapping[str, NeuronScores], model_accuracy: Mapping[str, float]
) -> Distributions:
    """Summaries of each dataset's neuron predictivities next to the model's accuracy."""
    if not scores:
        raise NeuronLensError("distributions needs scores of at least one dataset")
    return Distributions(dict(scores), dict(model_accuracy))
