"""Gradient x activation attribution (SKELETON eqs. 2-3, SKIP eqs. 1-2) and its baselines.

For example ``x`` with gold label ``y`` and neuron activation ``h`` (FFN activation after the
nonlinearity) at token ``j``::

    A(x, y) = mean over the example's K input tokens of | h_j * d logit_y / d h_j |
    score   = sum over the n examples (default n = 20, as in the papers)

``logit_y`` is the gold-label logit of the prompt's head (verbalizer or linear). Padding is
excluded; whether soft-prompt positions count is ``include_prompt``. The baselines use the
same call: ``method="activation"`` (sum over examples of the token-mean activation),
``"gradient"`` (the same with gradients) and ``"random"`` (seeded random scores; no forward
pass). So methods are interchangeable::

    for method in ("attribution", "activation", "gradient", "random"):
        scores = attribute(model, tuned, task, train, method=method)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from neuronlens.capture import AllTokens, CaptureData, SiteBatch
from neuronlens.errors import EmptyDataError, NeuronLensError
from neuronlens.models.families import ModelKind
from neuronlens.models.model import NeuronModel
from neuronlens.models.sites import Site, SiteSpec
from neuronlens.neurons import NeuronScores
from neuronlens.probes.base import Probe, ProbeInfo, State, run_probe
from neuronlens.prompts.heads import render_texts

METHODS = ("attribution", "activation", "gradient", "random")


class AttributionProbe(Probe):
    """Sum over examples of the token-mean of ``|a * g|`` (or ``a``, or ``g``)."""

    needs_grads = True

    def __init__(self, method: str = "attribution", include_prompt: bool = False) -> None:
        if method not in METHODS[:3]:
            raise NeuronLensError(f"unknown attribution method {method!r}; use one of {METHODS}")
        self.name = method
        self.needs_grads = method != "activation"
        self.positions = AllTokens(include_prompt=include_prompt)

    def init_state(self, sites: Sequence[Site]) -> State:
        return {s.name: torch.zeros(s.width, dtype=torch.float64) for s in sites}

    def update(self, state: State, sb: SiteBatch) -> None:
        if self.name == "attribution":
            per_token = (sb.acts * sb.grads).abs()
        elif self.name == "gradient":
            per_token = sb.grads
        else:
            per_token = sb.acts
        valid = sb.valid.to(per_token.dtype)
        n_tok = valid.sum(1, keepdim=True)
        if bool((n_tok == 0).any()):
            raise EmptyDataError("an example has no token at the chosen positions")
        per_example = torch.einsum("bn,bnd->bd", valid, per_token) / n_tok
        state[sb.site.name] += per_example.double().sum(0).cpu()

    def finish(
        self, state: State, sites: Sequence[Site], info: ProbeInfo
    ) -> dict[str, torch.Tensor]:
        return {s.name: state[s.name] for s in sites}


def attribute(
    model: NeuronModel,
    tuned,
    task,
    data,
    *,
    method: str = "attribution",
    n: int | None = 20,
    seed: int = 0,
    sites: SiteSpec | Sequence[SiteSpec] | None = None,
    include_prompt: bool = False,
    batch_size: int = 16,
    max_length: int | None = 256,
    progress: bool | None = None,
) -> NeuronScores:
    """Score every neuron by ``method`` on ``n`` examples of ``data`` (a task split).

    Args:
        tuned: the :class:`~neuronlens.prompts.PromptResult` whose prompt and head define the
            gold-label logit.
        method: ``"attribution"`` (|activation x gradient|), ``"activation"``, ``"gradient"``,
            ``"random"``.
        n: number of examples (a seeded subset; None = all).
        include_prompt: whether soft-prompt positions count among the tokens averaged over.
        sites: default every site (encoder and decoder for T5).
    """
    if method not in METHODS:
        raise NeuronLensError(f"unknown attribution method {method!r}; use one of {METHODS}")
    if len(data) == 0:
        raise EmptyDataError("attribution got an empty split")
    if n is not None and n < 1:
        raise NeuronLensError(f"n must be at least 1, got {n}")
    subset = data if n is None or n >= len(data) else data.subset(n, seed=seed)
    chosen = model.select_sites(sites)
    meta = {
        "n_examples": len(subset),
        "seed": seed,
        "prompt_seed": tuned.seed,
        "prompt_task": tuned.task,
        "include_prompt": include_prompt,
    }
    if method == "random":
        g = torch.Generator().manual_seed(seed)
        scores = {s.name: torch.rand(s.width, generator=g) for s in chosen}
        return NeuronScores(scores, chosen, "random", model.name, getattr(data, "task", None), meta)
    labels = torch.as_tensor(list(subset.labels), dtype=torch.long)
    if int(labels.max()) >= tuned.head.n_classes or int(labels.min()) < 0:
        raise NeuronLensError(f"labels outside the head's {tuned.head.n_classes} classes")
    if model.kind is ModelKind.ENCODER_DECODER and tuned.head.kind == "linear":
        chosen = [s for s in chosen if s.stack != "decoder_blocks"]
    data_c = CaptureData(
        texts=render_texts(model, tuned.head, task, subset), labels=labels, max_length=max_length
    )

    def fwd(enc, prompt, grads):
        return tuned.head.class_logits(model, enc, prompt, embeds_require_grad=grads)

    def gold_logit(logits, batch):
        return logits[torch.arange(logits.shape[0], device=logits.device), batch.labels]

    return run_probe(
        model,
        AttributionProbe(method, include_prompt),
        data_c,
        sites=chosen,
        prompt=tuned.prompt if tuned.n_tokens else None,
        forward=fwd,
        objective=gold_logit,
        task=getattr(data, "task", None),
        batch_size=batch_size,
        progress=progress,
        meta=meta,
    )
