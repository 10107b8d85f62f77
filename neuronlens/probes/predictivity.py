"""Skill-neuron predictivity (Wang et al. 2022; robustness paper eqs. 2-5).

For neuron ``N`` and position ``i`` (activation ``a`` = FFN activation after the
nonlinearity, read at the ``i``-th selected position; by default where the prompt's head
decides, :func:`neuronlens.positions.decision_positions`: the pooled input tokens for a
pooled linear head, else the soft-prompt positions plus the answer position when that lies
outside the prompt, or only the answer where a causal LM's prompt precedes the input):

* baseline ``a_bsl(N, i)``: mean over the **train** split of ``a(N, i, x)``;
* accuracy ``Acc(N, i)``: fraction of **dev** examples with ``[a(N, i, x) > a_bsl] == y``;
* predictivity ``Pred(N, i) = max(Acc, 1 - Acc)`` (inhibitory neurons count too);
* over ``k`` prompts of different seeds: ``Pred(N) = mean_k max_i Pred(N, i)``.

Labels must be binary; a multi-class task is probed one class against the rest with an
explicit ``one_vs_rest=c`` (``y = [label == c]``). The signed accuracy ``Acc`` at the best
position is kept in ``scores.extra["accuracy"]`` (> 0.5: excitatory, < 0.5: inhibitory),
the baselines in ``scores.extra["baseline_k"]`` (``[n positions, width]`` per site), so a later
call can reuse them for another dataset (``baselines=``: the adversarial variant uses the
clean train baseline). Memory: sites x positions x neurons, whatever the data size.

A map that cannot rank anything is an error, never a ranking of noise: positions that
cannot see the input (a soft prompt before the input of a causal LM), a selected position at
which no neuron varies across the dev examples, or scores that are all the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

import neuronlens.checks as checks
from neuronlens.capture import (
    AllTokens,
    CaptureData,
    PositionContext,
    Positions,
    PromptAndAnswer,
    SiteBatch,
    blind_positions,
)
from neuronlens.errors import (
    DataError,
    DegenerateScoresError,
    EmptyDataError,
    NeuronLensError,
    ShapeMismatchError,
)
from neuronlens.models.families import ModelKind
from neuronlens.models.model import NeuronModel
from neuronlens.models.placement import dtype_name
from neuronlens.models.sites import Site, SiteSpec
from neuronlens.neurons import NeuronScores
from neuronlens.positions import (
    decision_positions,
    positions_from_spec,
    positions_spec,
    warn_if_elsewhere,
)
from neuronlens.probes.base import Probe, ProbeRun, State, collect_state, compute_dtype_name
from neuronlens.prompts.heads import render_texts
from neuronlens.prompts.results import PromptResult

#: a position "varies" when some neuron's std over the dev examples exceeds this share of the
#: activations' scale there (float noise from batching is ~1e-7 of it)
VARIES = 1e-5

_BLIND = (
    "in a causal LM a soft prompt placed before the input is computed before the model has "
    "seen the input, so its activations are the same for every example and predictivity "
    "there is meaningless. Tune the prompt with readout='prompt' (the prompt follows the "
    "input, and the answer is read at its last position), or pass positions=AnswerToken() "
    "(the position where the head reads the answer) or positions=LastToken()"
)


def _add(state: State, key: str, value: torch.Tensor) -> None:
    """Add ``value`` to ``state[key]``; the first batch fixes its shape."""
    if key not in state:
        state[key] = value.clone()
        return
    if state[key].shape != value.shape:
        raise NeuronLensError(
            "predictivity compares each selected position across examples, so its positions "
            f"must pick the same number in every example (got {state[key].shape[0]}, then "
            f"{value.shape[0]}): use PromptTokens(), AnswerToken(), PromptAndAnswer(), "
            "LastToken() or Pooled(...)"
        )
    state[key] += value


class _PositionProbe(Probe):
    """Shared by the two predictivity passes: positions, and the check that they see the input."""

    def __init__(self, positions: Positions) -> None:
        if isinstance(positions, AllTokens):
            raise NeuronLensError(
                "predictivity compares each selected position across examples; AllTokens() "
                "picks a different number per example. Pool them with "
                "Pooled(AllTokens(include_prompt=False)), or use PromptTokens() / AnswerToken()"
            )
        self.positions = positions

    def init_state(self, sites: Sequence[Site]) -> State:
        self._first = sites[0].name
        return {}  # shapes come with the first batch (the number of positions)

    def check(self, sb: SiteBatch) -> None:
        layout = sb.batch.layout
        if sb.site.name != self._first or layout is None or sb.site.stack == "decoder_blocks":
            return
        idx, valid = self.positions.select(PositionContext(layout))
        if bool(blind_positions(layout, idx, valid).any()):
            raise NeuronLensError(f"positions {self.positions} cannot see the input: {_BLIND}")


class BaselineProbe(_PositionProbe):
    """Mean activation per selected position: state ``sum [n, width]`` and ``count [n]``."""

    name = "prompt_baseline"

    def __init__(self, positions: Positions | None = None) -> None:
        super().__init__(positions or PromptAndAnswer())

    def update(self, state: State, sb: SiteBatch) -> None:
        self.check(sb)
        v = sb.valid.double()
        _add(state, f"{sb.site.name}/sum", (sb.acts.double() * v.unsqueeze(-1)).sum(0).cpu())
        _add(state, f"{sb.site.name}/count", v.sum(0).cpu())


class NeuronAccuracyProbe(_PositionProbe):
    """Counts, per selected position and neuron, dev examples with ``[a > baseline] == y``;
    also the sums that tell whether a position varies at all across examples."""

    name = "neuron_accuracy"

    def __init__(self, baseline: dict[str, torch.Tensor], positions: Positions | None = None):
        super().__init__(positions or PromptAndAnswer())
        self.baseline = baseline

    def update(self, state: State, sb: SiteBatch) -> None:
        self.check(sb)
        bsl = self.baseline[sb.site.name].to(sb.acts.device, torch.float64)
        if bsl.shape != sb.acts.shape[1:]:
            raise ShapeMismatchError(
                f"site {sb.site.name}: the baselines are {list(bsl.shape)} (positions x "
                f"neurons) but these positions give {list(sb.acts.shape[1:])}: reuse baselines "
                "only with the positions and prompts they were computed with"
            )
        y = sb.batch.labels.bool().view(-1, 1, 1)
        v = sb.valid.unsqueeze(-1)
        a = sb.acts.double()
        key = sb.site.name
        _add(state, f"{key}/correct", (((a > bsl) == y) & v).sum(0).cpu())
        _add(state, f"{key}/count", sb.valid.long().sum(0).cpu())
        _add(state, f"{key}/sum", (a * v).sum(0).cpu())
        _add(state, f"{key}/sumsq", (a * a * v).sum(0).cpu())


def _labels(data, one_vs_rest: int | None, n_classes: int | None = None) -> torch.Tensor:
    labels = torch.as_tensor(list(data.labels), dtype=torch.long)
    if one_vs_rest is not None:
        names = getattr(data, "label_names", None) or ()
        n = len(names) or n_classes or int(labels.max()) + 1  # the classes of the data
        if (
            isinstance(one_vs_rest, bool)
            or not isinstance(one_vs_rest, int)
            or not 0 <= one_vs_rest < n
        ):
            raise DataError(
                f"one_vs_rest={one_vs_rest!r} is not a class of this task (classes 0..{n - 1}"
                + (f": {list(names)}" if names else "")
                + ")"
            )
        return _both_classes((labels == one_vs_rest).long(), data, one_vs_rest)
    bad = sorted(set(labels.tolist()) - {0, 1})
    if bad:
        raise DataError(
            f"predictivity needs binary labels 0/1, got {bad}: for a multi-class task pass "
            "one_vs_rest=<class> (y = [label == class])"
        )
    return _both_classes(labels, data, None)


def _both_classes(y: torch.Tensor, data, one_vs_rest: int | None) -> torch.Tensor:
    """``y`` itself when both classes occur: against one class, a neuron's accuracy only
    says how often it exceeds its baseline, and ``max(acc, 1 - acc)`` ranks that."""
    if y.numel() and bool((y == y[0]).all()):
        names = getattr(data, "label_names", None) or ()
        c = int(y[0])
        if one_vs_rest is None:
            what = f"class {c}" + (f" ({names[c]!r})" if c < len(names) else "")
        else:
            what = f"{'' if c else 'not '}class {one_vs_rest} (one_vs_rest={one_vs_rest})"
        raise DataError(
            f"the dev labels are all {what}: predictivity needs both classes among the dev "
            "examples (a neuron's accuracy against one class only says how often it fires "
            "above its baseline); pass a dev split with examples of both classes"
        )
    return y


def _counts(state: State, site: Site, what: str) -> torch.Tensor:
    count = state[f"{site.name}/count"].double()
    if bool((count == 0).any()):
        bad = (count == 0).nonzero().flatten().tolist()
        raise EmptyDataError(
            f"selected positions {bad} hold no token in any {what} example (padding only)"
        )
    return count


def _still_positions(state: State, sites: Sequence[Site]) -> list[int]:
    """Selected positions at which no neuron of any site varies across the dev examples."""
    varies = None
    for s in sites:
        n = _counts(state, s, "dev").unsqueeze(-1)
        mean = state[f"{s.name}/sum"] / n
        std = (state[f"{s.name}/sumsq"] / n - mean**2).clamp_min(0).sqrt()
        scale = mean.abs().amax(-1, keepdim=True) + 1e-12
        here = (std > VARIES * scale).any(-1)
        varies = here if varies is None else varies | here
    return (~varies).nonzero().flatten().tolist()


def _baselines(model, run, k, chosen, baselines, train_data, positions):
    if baselines is not None:
        key = f"baseline_{k}"
        if key not in baselines.extra:
            raise NeuronLensError(f"the given baselines hold no {key} (fewer prompts?)")
        return {s.name: baselines.extra[key][s.name] for s in chosen}
    st, _, _ = collect_state(model, BaselineProbe(positions), train_data, run=run)
    return {s.name: st[f"{s.name}/sum"] / _counts(st, s, "train").unsqueeze(-1) for s in chosen}


@dataclass
class _Inputs:
    """What every prompt's pass shares: data, sites, positions, labels, batching."""

    task: object
    dev: object
    train: object
    baselines: NeuronScores | None
    chosen: list[Site]
    positions: Positions
    dev_labels: torch.Tensor
    batch_size: int
    max_length: int | None
    progress: bool | None
    compute_dtype: object = None


def _one_prompt(model: NeuronModel, k: int, pr: PromptResult, x: _Inputs):
    """``(pred, signed acc, per-position pred, baselines)`` of prompt ``k``, per site."""
    if pr.d_model is not None and pr.d_model != model.d_model:
        raise ShapeMismatchError(f"prompt {k} has width {pr.d_model}, the model {model.d_model}")
    pr.head.check_model(model)

    def fwd(enc, prompt, grads, head=pr.head):
        return head.class_logits(model, enc, prompt, embeds_require_grad=grads)

    prompt = pr.prompt if pr.n_tokens else None
    run = ProbeRun(x.chosen, prompt, fwd, batch_size=x.batch_size, progress=x.progress,
                   compute_dtype=x.compute_dtype)  # fmt: skip
    train_data = None
    if x.baselines is None:
        texts = render_texts(model, pr.head, x.task, x.train)
        train_data = CaptureData(texts=texts, max_length=x.max_length)
    bsl = _baselines(model, run, k, x.chosen, x.baselines, train_data, x.positions)
    texts = render_texts(model, pr.head, x.task, x.dev)
    data = CaptureData(texts=texts, labels=x.dev_labels, max_length=x.max_length)
    st, _, _ = collect_state(model, NeuronAccuracyProbe(bsl, x.positions), data, run=run)
    still = _still_positions(st, x.chosen)
    if still:
        raise DegenerateScoresError(
            f"prompt {k}: at selected positions {still} no neuron's activation varies "
            f"across the {len(x.dev)} dev examples, so predictivity there would rank noise. "
            f"If the model is a causal LM: {_BLIND}"
        )
    pred, signed, per_pos = {}, {}, {}
    for s in x.chosen:
        acc = st[f"{s.name}/correct"].double() / _counts(st, s, "dev").unsqueeze(-1)
        pred_pos = torch.maximum(acc, 1 - acc)  # [n positions, width]
        best = pred_pos.argmax(0)
        pred[s.name] = pred_pos.max(0).values
        signed[s.name] = acc.gather(0, best.unsqueeze(0)).squeeze(0)
        per_pos[s.name] = pred_pos
    return pred, signed, per_pos, bsl


def _positions(positions, prompts, baselines) -> tuple[Positions, bool]:
    """``(positions, asked)``: the positions given, else those of reused ``baselines``, else
    where the prompts' head decides (:func:`~neuronlens.positions.decision_positions`);
    ``asked``: whether the user chose them (inherited baselines count as their choice)."""
    readouts = sorted({pr.head.readout for pr in prompts})
    if positions is not None and positions != "auto":
        checks.instance("positions", positions, Positions, "a Positions object, e.g. AnswerToken()")
        return positions, True
    if len(readouts) > 1:
        raise NeuronLensError(
            f"the prompts read their answers at different readouts {readouts}, so there is no "
            "one place where the model decides: score prompts of one readout together, or "
            "pass positions="
        )
    spec = (baselines.meta.get("positions_spec") if baselines is not None else None) or None
    if spec is not None:
        chosen = positions_from_spec(spec)
        asked = bool(baselines.meta.get("positions_asked", True))
        if not asked:
            warn_if_elsewhere(chosen, readouts[0], "predictivity (positions of the baselines)")
        return chosen, asked
    return decision_positions(readouts[0]), False


def _splits(task, dev, train, baselines) -> tuple:
    """``(dev, train)`` checked: dev a labelled split; train (only its texts are read, for
    the baselines: a list of texts will do) unless ``baselines`` are reused."""
    dev = checks.split("predictivity's dev", dev)
    if train is not None:
        train = checks.split("predictivity's train", train, needs_labels=False)
        if isinstance(train, checks.Texts) and getattr(task, "is_pair", False):
            raise DataError(
                f"task {task.name!r} is a pair task: pass train= as a task split (texts and "
                "texts_b), not a list of single texts"
            )
    if baselines is None and train is None:
        raise NeuronLensError("give train= (to compute baselines) or baselines= (to reuse them)")
    if len(dev) == 0 or (train is not None and len(train) == 0):
        raise EmptyDataError("predictivity got an empty split")
    return dev, train


def _meta(prompts, positions, asked, dev, train, baselines, one_vs_rest) -> dict:
    return {
        "positions_spec": positions_spec(positions),
        "positions_asked": asked,
        "head_decides_at": repr(decision_positions(prompts[0].head)),
        "prompt_task": prompts[0].task,
        "seeds": [pr.seed for pr in prompts],
        "n_prompts": len(prompts),
        "prompt_tokens": [pr.n_tokens for pr in prompts],
        "readout": [pr.head.readout for pr in prompts],
        "positions": repr(positions),
        "n_dev": len(dev),
        "n_train": None if train is None else len(train),
        "dev_split": getattr(dev, "split", None),
        "baseline_reused": baselines is not None,
        "one_vs_rest": one_vs_rest,
    }


def predictivity(
    model: NeuronModel,
    prompts,
    task,
    dev,
    *,
    train=None,
    baselines: NeuronScores | None = None,
    sites: SiteSpec | Sequence[SiteSpec] | None = None,
    positions: Positions | None = None,
    one_vs_rest: int | None = None,
    batch_size: int = 32,
    max_length: int | None = 256,
    progress: bool | None = None,
    compute_dtype=None,
) -> NeuronScores:
    """Skill-neuron predictivity of every neuron at ``sites`` (default: every site the
    prompt reaches; the encoder for T5), averaged over the given prompts (one per seed).

    Args:
        prompts: a :class:`~neuronlens.prompts.PromptResult` or a list (k seeds).
        task: the task whose template renders the inputs.
        dev: the split on which neuron accuracies are computed.
        train: the split whose mean activations are the baselines (needed unless
            ``baselines`` is given); its labels are not read, so a list of its texts will do.
        baselines: reuse the baselines of an earlier result (same prompts and positions),
            e.g. the clean train baseline for an adversarial dev set.
        positions: where activations are read, a :mod:`neuronlens.positions` selector
            that picks the same number of positions in every example. Default: where the
            prompts' head decides (:func:`~neuronlens.positions.decision_positions`): the
            pooled input tokens for a pooled linear head (``readout="pool"``), the answer
            position where a causal LM's prompt precedes the input (``"last"``), else the
            soft-prompt positions and the answer position
            (:class:`~neuronlens.positions.PromptAndAnswer`); with ``baselines=``, the
            positions those were computed at. ``meta["positions"]`` says which were read,
            ``meta["positions_asked"]`` whether they were chosen by hand. Positions that
            cannot see the input are an error.
        one_vs_rest: for multi-class labels, the class probed against the rest (the dev
            labels must hold both classes, also after it).
        compute_dtype: run in this dtype (``"float32"``: a bf16 model on CPU), then cast back.

    Examples:
        >>> skill = predictivity(model, prompts, task, dev, train=train)  # doctest: +SKIP
        >>> skill.top(percent=1, per_layer=True)                         # doctest: +SKIP
    """
    prompts = [prompts] if isinstance(prompts, PromptResult) else list(prompts)
    if not prompts:
        raise NeuronLensError("predictivity needs at least one tuned prompt")
    dev, train = _splits(task, dev, train, baselines)
    if sites is None and model.kind is ModelKind.ENCODER_DECODER:
        sites = [s for s in model.sites if s.stack == "encoder_blocks"]
    chosen = model.select_sites(sites)
    positions, asked = _positions(positions, prompts, baselines)
    n_classes = getattr(task, "num_labels", None)
    x = _Inputs(task, dev, train, baselines, chosen, positions, _labels(dev, one_vs_rest, n_classes),
                batch_size, max_length, progress, compute_dtype)  # fmt: skip
    per_prompt = [_one_prompt(model, k, pr, x) for k, pr in enumerate(prompts)]

    def mean(i):
        return {
            s.name: torch.stack([p[i][s.name] for p in per_prompt]).mean(0).float() for s in chosen
        }

    scores = mean(0)
    flat = torch.cat([scores[s.name] for s in chosen])
    if bool((flat == flat[0]).all()):
        raise DegenerateScoresError(
            f"every one of the {flat.numel()} neurons has predictivity {float(flat[0]):.4f}: "
            "the map ranks nothing (check the positions, the prompt and the labels)"
        )
    same_n = len({p[2][chosen[0].name].shape for p in per_prompt}) == 1
    meta = _meta(prompts, positions, asked, dev, train, baselines, one_vs_rest)
    meta["model_dtype"] = dtype_name(model.dtype)
    meta["compute_dtype"] = compute_dtype_name(model, compute_dtype)
    task_name = getattr(dev, "task", getattr(task, "name", None))
    extra = {"accuracy": mean(1), **{f"baseline_{k}": p[3] for k, p in enumerate(per_prompt)}}
    return NeuronScores(
        scores, chosen, "predictivity", model.name, task_name, meta,
        per_token=mean(2) if same_n else None, extra=extra,
    )  # fmt: skip
