"""Skill-neuron predictivity (Wang et al. 2022; robustness paper eqs. 2-5).

For neuron ``N`` and prompt token ``p_i`` (activation ``a`` = FFN activation after the
nonlinearity, read at the soft-prompt position ``i``):

* baseline ``a_bsl(N, p_i)``: mean over the **train** split of ``a(N, p_i, x)``;
* accuracy ``Acc(N, p_i)``: fraction of **dev** examples with ``[a(N, p_i, x) > a_bsl] == y``;
* predictivity ``Pred(N, p_i) = max(Acc, 1 - Acc)`` (inhibitory neurons count too);
* over ``k`` prompts of different seeds: ``Pred(N) = mean_k max_i Pred(N, p_i)``.

Labels must be binary; a multi-class task is probed one class against the rest with an
explicit ``one_vs_rest=c`` (``y = [label == c]``). The signed accuracy ``Acc`` at the best
prompt token is kept in ``scores.extra["accuracy"]`` (> 0.5: excitatory, < 0.5: inhibitory),
the baselines in ``scores.extra["baseline_k"]`` (``[p, width]`` per site), so a later call can
reuse them for another dataset (``baselines=``: the adversarial variant uses the clean train
baseline). Memory: sites x prompt tokens x neurons, whatever the data size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from neuronlens.capture import CaptureData, PromptTokens, SiteBatch
from neuronlens.errors import DataError, EmptyDataError, NeuronLensError, ShapeMismatchError
from neuronlens.models.families import ModelKind
from neuronlens.models.model import NeuronModel
from neuronlens.models.sites import Site, SiteSpec
from neuronlens.probes.base import Probe, State, collect_state
from neuronlens.probes.scores import NeuronScores


class BaselineProbe(Probe):
    """Mean activation per prompt token: state ``sum [p, width]`` and ``count``."""

    name = "prompt_baseline"
    positions = PromptTokens()

    def __init__(self, n_tokens: int) -> None:
        self.n_tokens = n_tokens

    def init_state(self, sites: Sequence[Site]) -> State:
        st = {
            f"{s.name}/sum": torch.zeros(self.n_tokens, s.width, dtype=torch.float64) for s in sites
        }
        st["count"] = torch.zeros((), dtype=torch.float64)
        self._first = sites[0].name
        return st

    def update(self, state: State, sb: SiteBatch) -> None:
        state[f"{sb.site.name}/sum"] += sb.acts.double().sum(0).cpu()
        if sb.site.name == self._first:
            state["count"] += sb.acts.shape[0]


class NeuronAccuracyProbe(Probe):
    """Counts, per prompt token and neuron, dev examples with ``[a > baseline] == y``."""

    name = "neuron_accuracy"
    positions = PromptTokens()

    def __init__(self, baseline: dict[str, torch.Tensor]) -> None:
        self.baseline = baseline

    def init_state(self, sites: Sequence[Site]) -> State:
        st = {
            f"{s.name}/correct": torch.zeros_like(self.baseline[s.name], dtype=torch.int64)
            for s in sites
        }
        st["count"] = torch.zeros((), dtype=torch.int64)
        self._first = sites[0].name
        return st

    def update(self, state: State, sb: SiteBatch) -> None:
        y = sb.batch.labels.bool().view(-1, 1, 1)
        bsl = self.baseline[sb.site.name].to(sb.acts.device, sb.acts.dtype)
        above = sb.acts > bsl.unsqueeze(0)
        state[f"{sb.site.name}/correct"] += (above == y).sum(0).cpu()
        if sb.site.name == self._first:
            state["count"] += sb.acts.shape[0]


def _labels(data, one_vs_rest: int | None) -> torch.Tensor:
    labels = torch.as_tensor(list(data.labels), dtype=torch.long)
    if one_vs_rest is not None:
        return (labels == one_vs_rest).long()
    bad = sorted(set(labels.tolist()) - {0, 1})
    if bad:
        raise DataError(
            f"predictivity needs binary labels 0/1, got {bad}: for a multi-class task pass "
            "one_vs_rest=<class> (y = [label == class])"
        )
    return labels


def predictivity(
    model: NeuronModel,
    prompts,
    task,
    dev,
    *,
    train=None,
    baselines: NeuronScores | None = None,
    sites: SiteSpec | Sequence[SiteSpec] | None = None,
    one_vs_rest: int | None = None,
    batch_size: int = 32,
    max_length: int | None = 256,
    progress: bool | None = None,
) -> NeuronScores:
    """Skill-neuron predictivity of every neuron at ``sites`` (default: every site the
    prompt reaches; the encoder for T5), averaged over the given prompts (one per seed).

    Args:
        prompts: a :class:`~neuronlens.prompts.PromptResult` or a list (k seeds).
        task: the task whose template renders the inputs.
        dev: the split on which neuron accuracies are computed.
        train: the split whose mean activations are the baselines (needed unless
            ``baselines`` is given).
        baselines: reuse the baselines of an earlier result (same prompts), e.g. the clean
            train baseline for an adversarial dev set.
        one_vs_rest: for multi-class labels, the class probed against the rest.
    """
    from neuronlens.prompts.tuning import PromptResult, render_texts

    prompts = [prompts] if isinstance(prompts, PromptResult) else list(prompts)
    if not prompts:
        raise NeuronLensError("predictivity needs at least one tuned prompt")
    if any(p.n_tokens == 0 for p in prompts):
        raise NeuronLensError("predictivity reads soft-prompt positions: the prompt has none")
    if baselines is None and train is None:
        raise NeuronLensError("give train= (to compute baselines) or baselines= (to reuse them)")
    if len(dev) == 0 or (train is not None and len(train) == 0):
        raise EmptyDataError("predictivity got an empty split")
    if sites is None and model.kind is ModelKind.ENCODER_DECODER:
        sites = [s for s in model.sites if s.stack == "encoder_blocks"]
    chosen = model.select_sites(sites)
    dev_labels = _labels(dev, one_vs_rest)
    per_prompt_pred, per_prompt_acc, per_token, new_baselines = [], [], [], {}
    for k, pr in enumerate(prompts):
        if pr.d_model != model.d_model:
            raise ShapeMismatchError(
                f"prompt {k} has width {pr.d_model}, the model {model.d_model}"
            )
        p = pr.n_tokens

        def fwd(enc, prompt, grads, head=pr.head):
            return head.class_logits(model, enc, prompt, embeds_require_grad=grads)

        if baselines is not None:
            key = f"baseline_{k}"
            if key not in baselines.extra:
                raise NeuronLensError(f"the given baselines hold no {key} (fewer prompts?)")
            bsl = {s.name: baselines.extra[key][s.name] for s in chosen}
            if any(b.shape != (p, s.width) for s, b in zip(chosen, bsl.values(), strict=True)):
                raise ShapeMismatchError(
                    "the given baselines do not match the prompts' length / sites"
                )
        else:
            data = CaptureData(
                texts=render_texts(model, pr.head, task, train), max_length=max_length
            )
            st, _, _ = collect_state(
                model,
                BaselineProbe(p),
                data,
                sites=chosen,
                prompt=pr.prompt,
                forward=fwd,
                batch_size=batch_size,
                progress=progress,
            )
            bsl = {s.name: st[f"{s.name}/sum"] / st["count"] for s in chosen}
        new_baselines[f"baseline_{k}"] = bsl
        data = CaptureData(
            texts=render_texts(model, pr.head, task, dev), labels=dev_labels, max_length=max_length
        )
        st, _, n = collect_state(
            model,
            NeuronAccuracyProbe(bsl),
            data,
            sites=chosen,
            prompt=pr.prompt,
            forward=fwd,
            batch_size=batch_size,
            progress=progress,
        )
        pred_k, acc_k, tok_k = {}, {}, {}
        for s in chosen:
            acc = st[f"{s.name}/correct"].double() / st["count"].double()  # [p, width]
            pred_tok = torch.maximum(acc, 1 - acc)
            best = pred_tok.argmax(0)
            pred_k[s.name] = pred_tok.max(0).values
            acc_k[s.name] = acc.gather(0, best.unsqueeze(0)).squeeze(0)
            tok_k[s.name] = pred_tok
        per_prompt_pred.append(pred_k)
        per_prompt_acc.append(acc_k)
        per_token.append(tok_k)

    def mean(dicts):
        return {s.name: torch.stack([d[s.name] for d in dicts]).mean(0).float() for s in chosen}

    same_p = len({pr.n_tokens for pr in prompts}) == 1
    return NeuronScores(
        scores=mean(per_prompt_pred),
        sites=chosen,
        method="predictivity",
        model=model.name,
        task=getattr(dev, "task", getattr(task, "name", None)),
        meta={
            "prompt_task": prompts[0].task,
            "seeds": [pr.seed for pr in prompts],
            "n_prompts": len(prompts),
            "prompt_tokens": [pr.n_tokens for pr in prompts],
            "n_dev": len(dev),
            "n_train": None if train is None else len(train),
            "dev_split": getattr(dev, "split", None),
            "baseline_reused": baselines is not None,
            "one_vs_rest": one_vs_rest,
        },
        per_token=mean(per_token) if same_p else None,
        extra={"accuracy": mean(per_prompt_acc), **new_baselines},
    )
