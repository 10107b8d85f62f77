"""Gradient x activation attribution (SKELETON eqs. 2-3, SKIP eqs. 1-2) and its baselines.

For example ``x`` with gold label ``y`` and neuron activation ``h`` (FFN activation after the
nonlinearity) at token ``j``::

    A(x, y) = mean over the example's K input tokens of | h_j * d logit_y / d h_j |
    score   = sum over the n examples (default n = 20, as in the papers)

``logit_y`` is the gold-label logit of the prompt's head, read where its ``readout`` says.
Padding is excluded; whether soft-prompt positions count is ``include_prompt``.

Each method is a small class with one call signature (as captum's), so methods swap::

    for method in (GradientXActivation, Activation, Gradient, RandomScores):
        scores = method(model).attribute(tuned, task, train, n=20)
    attribute(model, tuned, task, train, method="gradient")     # the same, by name

:class:`Activation` sums the token-mean activation, :class:`Gradient` the token-mean
gradient, :class:`RandomScores` draws seeded random scores (no forward pass needed).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

import neuronlens.checks as checks
from neuronlens.capture import AllTokens, CaptureData, SiteBatch
from neuronlens.errors import EmptyDataError, NeuronLensError
from neuronlens.models.families import ModelKind
from neuronlens.models.model import NeuronModel
from neuronlens.models.placement import dtype_name, widen
from neuronlens.models.sites import Site, SiteSpec
from neuronlens.neurons import NeuronScores
from neuronlens.positions import ReadoutWarning
from neuronlens.probes.base import Probe, ProbeInfo, ProbeRun, State, run_probe
from neuronlens.prompts.heads import render_texts


class AttributionMethod:
    """Scores neurons for a tuned prompt's gold-label logit. Subclasses set ``name`` and
    ``needs_grads`` and implement :meth:`per_token` (what is averaged over an example's
    tokens); :meth:`attribute` is the one call every method shares."""

    name = "attribution"
    needs_grads = True

    def __init__(self, model: NeuronModel) -> None:
        self.model = model

    def per_token(self, acts: Tensor, grads: Tensor | None) -> Tensor:
        raise NotImplementedError

    def per_head(self, acts: Tensor, grads: Tensor | None) -> Tensor:
        """Per token and head from ``[..., heads, head_dim]`` values."""
        raise NotImplementedError

    def per_unit(self, acts: Tensor, grads: Tensor | None, group: int) -> Tensor:
        """:meth:`per_token` for single units, :meth:`per_head` for units of ``group``
        values (whole attention heads)."""
        if group == 1:
            return self.per_token(acts, grads)
        g = None if grads is None else grads.unflatten(-1, (-1, group))
        return self.per_head(acts.unflatten(-1, (-1, group)), g)

    def attribute(
        self,
        tuned,
        task,
        data,
        *,
        n: int | None = 20,
        seed: int = 0,
        sites: SiteSpec | Sequence[SiteSpec] | None = None,
        include_prompt: bool = False,
        batch_size: int = 16,
        max_length: int | None = 256,
        progress: bool | None = None,
        modules: str | Sequence[str] = "ffn",
        compute_dtype=None,
    ) -> NeuronScores:
        """Scores of every unit at ``sites`` (default every site of ``modules`` the head
        reaches) on a seeded subset of ``n`` examples of ``data`` (``None``: all of them).

        ``modules``: ``"ffn"`` (neurons), ``"heads"`` (whole attention heads),
        ``"attn_out"`` (the attention output projection's inputs), ``"all"``, or a list.
        ``compute_dtype``: run the forward and backward in this dtype (e.g. ``"float32"``
        for a bfloat16 model on a CPU, where the bfloat16 backward is slow), with the
        weights cast back afterwards (:meth:`NeuronModel.computing_in`); ``None``: the
        model's own dtype.
        """
        model = self.model
        subset, chosen, meta = _prepare(model, tuned, data, n, seed, sites, include_prompt, modules)
        labels = torch.as_tensor(list(subset.labels), dtype=torch.long)
        if int(labels.max()) >= tuned.head.n_classes or int(labels.min()) < 0:
            raise NeuronLensError(f"labels outside the head's {tuned.head.n_classes} classes")
        texts = render_texts(model, tuned.head, task, subset)
        data_c = CaptureData(texts=texts, labels=labels, max_length=max_length)

        def fwd(enc, prompt, grads):
            return tuned.head.class_logits(model, enc, prompt, embeds_require_grad=grads)

        prompt = tuned.prompt if tuned.n_tokens else None
        run = ProbeRun(chosen, prompt, fwd, gold_logit, batch_size, progress, compute_dtype)
        probe = AttributionProbe(self, include_prompt)
        out = run_probe(model, probe, data_c, run=run, task=getattr(data, "task", None), meta=meta)
        _warn_if_dead(out, include_prompt)
        return out


class GradientXActivation(AttributionMethod):
    """``|a * d logit_y / d a|`` (SKELETON / SKIP attribution)."""

    name = "attribution"

    def per_token(self, acts: Tensor, grads: Tensor | None) -> Tensor:
        return (acts * grads).abs()

    def per_head(self, acts: Tensor, grads: Tensor | None) -> Tensor:
        # d logit / d gate of the head's output (the head scaled by a gate at 1): a head's
        # first-order effect, as a neuron's |a * g| is its own
        return (acts * grads).sum(-1).abs()


class Activation(AttributionMethod):
    """The activation itself (SKELETON's "Activation" baseline)."""

    name = "activation"
    needs_grads = False

    def per_token(self, acts: Tensor, grads: Tensor | None) -> Tensor:
        return acts

    def per_head(self, acts: Tensor, grads: Tensor | None) -> Tensor:
        return acts.norm(dim=-1)  # the size of the head's output


class Gradient(AttributionMethod):
    """The gradient of the gold-label logit (SKELETON's "Gradient" baseline)."""

    name = "gradient"

    def per_token(self, acts: Tensor, grads: Tensor | None) -> Tensor:
        return grads

    def per_head(self, acts: Tensor, grads: Tensor | None) -> Tensor:
        return grads.norm(dim=-1)


class RandomScores(AttributionMethod):
    """Seeded random scores (SKELETON's "Random" baseline); no forward pass."""

    name = "random"
    needs_grads = False

    def attribute(self, tuned, task, data, *, n=20, seed=0, sites=None, include_prompt=False,
                  batch_size=16, max_length=256, progress=None, modules="ffn",
                  compute_dtype=None) -> NeuronScores:  # fmt: skip
        _, chosen, meta = _prepare(self.model, tuned, data, n, seed, sites, include_prompt, modules)
        meta["model_dtype"] = dtype_name(self.model.dtype)
        g = torch.Generator().manual_seed(seed)
        scores = {s.name: torch.rand(s.width, generator=g) for s in chosen}
        return NeuronScores(
            scores, chosen, self.name, self.model.name, getattr(data, "task", None), meta
        )


METHODS: dict[str, type[AttributionMethod]] = {
    m.name: m for m in (GradientXActivation, Activation, Gradient, RandomScores)
}


def method_class(method: str | AttributionMethod | type[AttributionMethod]):
    """The method class of a name (``"attribution"``, ``"activation"``, ``"gradient"``,
    ``"random"``), a class or an instance."""
    if isinstance(method, AttributionMethod):
        return type(method)
    if isinstance(method, type) and issubclass(method, AttributionMethod):
        return method
    if method not in METHODS:
        raise NeuronLensError(
            f"unknown attribution method {method!r}; use one of {list(METHODS)} "
            "or an AttributionMethod class"
        )
    return METHODS[method]


class AttributionProbe(Probe):
    """Sum over examples of the token-mean of ``method.per_token(a, g)``."""

    def __init__(
        self, method: str | AttributionMethod = "attribution", include_prompt: bool = False
    ) -> None:
        cls = method_class(method)
        if cls is RandomScores:
            raise NeuronLensError("random scores need no probe: use RandomScores(model)")
        self.method = method if isinstance(method, AttributionMethod) else cls(None)
        self.name = cls.name
        self.needs_grads = cls.needs_grads
        self.positions = AllTokens(include_prompt=include_prompt)
        self.grouped = True  # whole heads: the method's per_head

    def init_state(self, sites: Sequence[Site]) -> State:
        return {s.name: torch.zeros(s.width, dtype=torch.float64) for s in sites}

    def update(self, state: State, sb: SiteBatch) -> None:
        grads = None if sb.grads is None else widen(sb.grads)
        per_token = self.method.per_unit(widen(sb.acts), grads, sb.site.group)
        valid = sb.valid.to(per_token.dtype)
        n_tok = valid.sum(1, keepdim=True)
        if bool((n_tok == 0).any()):
            raise EmptyDataError("an example has no token at the chosen positions")
        per_example = torch.einsum("bn,bnd->bd", valid, per_token) / n_tok
        state[sb.site.name] += per_example.double().sum(0).cpu()

    def finish(self, state: State, sites: Sequence[Site], info: ProbeInfo) -> dict[str, Tensor]:
        return {s.name: state[s.name] for s in sites}


def _warn_if_dead(scores: NeuronScores, include_prompt: bool) -> None:
    """Warn about sites whose every score is exactly 0: they rank nothing."""
    dead = [s.name for s in scores.sites if not bool(scores.scores[s.name].any())]
    if not dead:
        return
    hint = (
        " A causal LM read at a soft prompt after the input has no path from its last "
        "layer's input positions to the answer: pass include_prompt=True to score the "
        "prompt positions too"
        if not include_prompt
        else ""
    )
    warnings.warn(
        f"{scores.method}: every score is 0 at {dead}, so these sites rank nothing (ties "
        f"break by index).{hint}",
        ReadoutWarning,
        stacklevel=3,
    )


def gold_logit(logits: Tensor, batch) -> Tensor:
    """The objective of every gradient method: each example's gold-label logit."""
    return logits[torch.arange(logits.shape[0], device=logits.device), batch.labels]


def _prepare(model, tuned, data, n, seed, sites, include_prompt, modules="ffn"):
    """``(subset, sites, meta)`` shared by every method: checks, the seeded subset, the
    sites the head reaches (a T5 linear head reads the encoder only)."""
    checks.split("attribute's data", data)  # labels: the gold logit is differentiated
    if len(data) == 0:
        raise EmptyDataError("attribution got an empty split")
    if n is not None:
        checks.integer("n", n, minimum=1)
    tuned.head.check_model(model)
    subset = data if n is None or n >= len(data) else data.subset(n, seed=seed)
    chosen = model.select_sites(sites, modules)
    if model.kind is ModelKind.ENCODER_DECODER and tuned.head.kind == "linear":
        chosen = [s for s in chosen if s.stack != "decoder_blocks"]
    meta = {
        "n_examples": len(subset),
        "seed": seed,
        "prompt_seed": tuned.seed,
        "prompt_task": tuned.task,
        "readout": tuned.head.readout,
        "include_prompt": include_prompt,
        "modules": sorted({s.module for s in chosen}),
    }
    return subset, chosen, meta


def attribute(
    model: NeuronModel,
    tuned,
    task,
    data,
    *,
    method: str | AttributionMethod | type[AttributionMethod] = "attribution",
    **kwargs,
) -> NeuronScores:
    """Score every neuron by ``method`` on ``n`` examples of ``data`` (a task split).

    ``method``: ``"attribution"`` (|activation x gradient|), ``"activation"``,
    ``"gradient"``, ``"random"``, or an :class:`AttributionMethod` class or instance;
    ``kwargs`` go to :meth:`AttributionMethod.attribute` (``n``, ``seed``, ``sites``,
    ``modules``, ``include_prompt``, ``batch_size``, ``max_length``, ``progress``,
    ``compute_dtype``).

    A whole head (``modules="heads"``) scores ``|sum over its values of a * g|``, the
    gradient of the gold logit w.r.t. a gate scaling the head's output; ``"activation"``
    and ``"gradient"`` score a head by the norm of its output and of that output's gradient.

    Examples:
        >>> attr = attribute(model, tuned, task, train, n=20)            # doctest: +SKIP
        >>> attr.top(percent=50)                                         # doctest: +SKIP
        >>> heads = attribute(model, tuned, task, train, modules="heads")  # doctest: +SKIP
    """
    return method_class(method)(model).attribute(tuned, task, data, **kwargs)
