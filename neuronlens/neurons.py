"""Neuron scores and neuron sets: what every probe returns, and what interventions take.

:class:`NeuronScores` holds one score per neuron per site (optionally per prompt token) with
metadata (model, sites, method, task, seeds, data sizes). It selects top neurons by count or
percent, per layer or over the whole model (:meth:`NeuronScores.top`), ranks them, correlates
with another scores object (Spearman per layer, then averaged), and saves / loads itself.

:class:`NeuronSet` is a set of neurons per site (e.g. the top 5 %), with a seeded random
control that has the same per-site counts.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

import neuronlens.checks as checks
from neuronlens.errors import NeuronLensError, NonFiniteScoresError, ShapeMismatchError
from neuronlens.io import load_result, save_result
from neuronlens.models.sites import Site

_NON_FINITE = (
    "such scores cannot be ranked. Check what they were computed from: the activations (the "
    "model's dtype and weights, the prompt, any intervention), the data, and a probe's finish "
    "(a division by a zero count?)"
)


@dataclass
class NeuronSet:
    """Neuron indices per site (``indices[site_name]`` sorted ascending), and site widths."""

    indices: dict[str, Tensor]
    widths: dict[str, int]
    description: str = ""

    def __post_init__(self) -> None:
        for name, idx in self.indices.items():
            if name not in self.widths:
                raise NeuronLensError(f"neuron set names site {name!r} without its width")
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.widths[name]):
                raise ShapeMismatchError(
                    f"neuron index out of range for site {name} (width {self.widths[name]})"
                )
            self.indices[name] = torch.unique(idx.long().cpu())

    @property
    def count(self) -> int:
        return sum(int(v.numel()) for v in self.indices.values())

    def counts(self) -> dict[str, int]:
        """Number of neurons per site."""
        return {k: int(v.numel()) for k, v in self.indices.items()}

    def mask(self, site: str) -> Tensor:
        """``[width]`` bool mask of the set's neurons at a site."""
        m = torch.zeros(self.widths[site], dtype=torch.bool)
        if site in self.indices:
            m[self.indices[site]] = True
        return m

    def random_control(self, seed: int = 0) -> NeuronSet:
        """Random neurons with the same count at every site (seeded, reproducible)."""
        g = torch.Generator().manual_seed(checks.integer("seed", seed))
        out = {}
        for name in sorted(self.indices):
            out[name] = torch.randperm(self.widths[name], generator=g)[: self.indices[name].numel()]
        return NeuronSet(
            out, dict(self.widths), f"random control (seed {seed}) of {self.description}"
        )

    def __repr__(self) -> str:
        return f"NeuronSet({self.count} neurons over {len(self.indices)} sites: {self.description})"


@dataclass
class SpearmanResult:
    """Per-site Spearman rho and p-value, and the mean rho over sites."""

    rho: dict[str, float]
    p_value: dict[str, float]

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.rho.values())))


@dataclass
class NeuronScores:
    """One score per neuron per site, with metadata.

    Attributes:
        scores: site name -> ``[width]`` scores (higher = more important).
        sites: the sites, in model order.
        method: what computed them (``"predictivity"``, ``"attribution"`` ...).
        model: the model's name.
        task: the task (or data) they were computed on.
        meta: further metadata (seeds, data sizes, prompt tokens, one-vs-rest class ...).
        per_token: optional site name -> ``[p, width]`` scores per prompt token.
        extra: optional further per-neuron arrays, e.g. ``extra["accuracy"]`` (signed neuron
            accuracy of the predictivity probe).
    """

    scores: dict[str, Tensor]
    sites: list[Site]
    method: str
    model: str
    task: str | None = None
    meta: dict = field(default_factory=dict)
    per_token: dict[str, Tensor] | None = None
    extra: dict[str, dict[str, Tensor]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for s in self.sites:
            if s.name not in self.scores:
                raise NeuronLensError(f"scores lack site {s.name}")
            if self.scores[s.name].shape != (s.width,):
                raise ShapeMismatchError(
                    f"site {s.name}: {list(self.scores[s.name].shape)} scores for {s.width} neurons"
                )
        # NaN or inf would be ranked (inf first, NaN as if in index order): refuse them
        for what, maps in (("scores", self.scores), ("per-token scores", self.per_token or {})):
            for name, values in maps.items():
                where = f"{self.method} {what} of {self.model} at site {name}"
                checks.finite_tensor(where, values, hint=_NON_FINITE, error=NonFiniteScoresError)

    # ------------------------------------------------------------------ access
    @property
    def widths(self) -> dict[str, int]:
        return {s.name: s.width for s in self.sites}

    def __getitem__(self, site: str | Site) -> Tensor:
        return self.scores[site.name if isinstance(site, Site) else site]

    def flat(self) -> Tensor:
        """All scores concatenated in site order, ``[total neurons]``."""
        return torch.cat([self.scores[s.name] for s in self.sites])

    @property
    def n_neurons(self) -> int:
        return sum(s.width for s in self.sites)

    # ------------------------------------------------------------------ selection
    def top(
        self,
        k: int | None = None,
        *,
        percent: float | None = None,
        per_layer: bool = False,
        largest: bool = True,
    ) -> NeuronSet:
        """The top ``k`` neurons (or ``percent`` % of them), per layer or over the whole model.

        Per layer, ``k`` / ``percent`` apply to each site; over the whole model they apply to
        all neurons together (so layers get different counts). Ties break by lower index.
        """
        if (k is None) == (percent is None):
            raise NeuronLensError("give exactly one of k= or percent=")
        if percent is not None:
            percent = checks.number("percent", percent, low=0, high=100)
        if k is not None:
            k = checks.integer("k", k, minimum=0)

        def count(n: int) -> int:
            return min(n, k) if k is not None else int(math.floor(n * percent / 100 + 1e-9))

        sign = 1.0 if largest else -1.0
        out: dict[str, Tensor] = {}
        if per_layer:
            for s in self.sites:
                order = _stable_order(sign * self.scores[s.name].double())
                out[s.name] = order[: count(s.width)]
        else:
            flat = sign * self.flat().double()
            order = _stable_order(flat)[: count(flat.numel())]
            start = 0
            for s in self.sites:
                sel = order[(order >= start) & (order < start + s.width)] - start
                out[s.name] = sel
                start += s.width
        what = (
            f"top {k if k is not None else f'{percent}%'} {'per layer' if per_layer else 'overall'}"
        )
        return NeuronSet(out, self.widths, f"{what} by {self.method}")

    def ranks(self, *, per_layer: bool = False) -> dict[str, Tensor]:
        """Rank of each neuron, 1 = highest score (over the whole model, or per layer)."""
        if per_layer:
            return {s.name: _ranks(self.scores[s.name]) for s in self.sites}
        r = _ranks(self.flat())
        out, start = {}, 0
        for s in self.sites:
            out[s.name] = r[start : start + s.width]
            start += s.width
        return out

    def spearman(self, other: NeuronScores) -> SpearmanResult:
        """Spearman correlation with another scores object, per site (then ``.mean``).

        p-values are per site (scipy); average rho, never p-values.
        """
        from scipy.stats import spearmanr

        if self.widths != other.widths:
            raise ShapeMismatchError(
                f"the two scores cover different sites or widths: {self.widths} vs {other.widths}"
            )
        rho, pv = {}, {}
        for s in self.sites:
            res = spearmanr(
                self.scores[s.name].double().numpy(), other.scores[s.name].double().numpy()
            )
            rho[s.name], pv[s.name] = float(res.statistic), float(res.pvalue)
        return SpearmanResult(rho, pv)

    def by_layer(self, reduce: str = "mean") -> dict[str, float]:
        """One number per site: the mean (or ``max``) score."""
        fn = {"mean": torch.mean, "max": torch.max}[reduce]
        return {s.name: float(fn(self.scores[s.name].double())) for s in self.sites}

    # ------------------------------------------------------------------ saving
    def save(self, path: str | os.PathLike) -> str:
        """Write ``path.safetensors`` and ``path.json``."""
        tensors = {f"scores/{k}": v for k, v in self.scores.items()}
        if self.per_token:
            tensors.update({f"per_token/{k}": v for k, v in self.per_token.items()})
        for name, arrays in self.extra.items():
            tensors.update({f"extra/{name}/{k}": v for k, v in arrays.items()})
        meta = {
            "method": self.method,
            "model": self.model,
            "task": self.task,
            "sites": [_site_row(s) for s in self.sites],
            "meta": self.meta,
        }
        return str(save_result(path, tensors, meta, kind="neuron_scores"))

    @classmethod
    def load(cls, path: str | os.PathLike, model=None) -> NeuronScores:
        """Load saved scores; with ``model``, check that its sites and widths match."""
        tensors, meta = load_result(path, kind="neuron_scores")
        sites = [Site(*row) for row in meta["sites"]]  # FFN rows: stack, layer, hook, width
        if model is not None:
            have = {s.name: s.width for s in model.sites}
            for kind in {s.module for s in sites} - {"ffn"}:
                have.update({s.name: s.width for s in model.attention_sites(kind)})
            for s in sites:
                if have.get(s.name) != s.width:
                    raise ShapeMismatchError(
                        f"{path}: scores of {meta['model']} have site {s.name} with {s.width} "
                        f"neurons; {model.name} has {have.get(s.name, 'no such site')}"
                    )
        scores, per_token, extra = {}, {}, {}
        for key, value in tensors.items():
            part, _, rest = key.partition("/")
            if part == "scores":
                scores[rest] = value
            elif part == "per_token":
                per_token[rest] = value
            else:
                name, _, site = rest.partition("/")
                extra.setdefault(name, {})[site] = value
        try:
            return cls(
                scores,
                sites,
                meta["method"],
                meta["model"],
                meta["task"],
                meta["meta"],
                per_token or None,
                extra,
            )
        except NonFiniteScoresError as err:
            raise NonFiniteScoresError(f"{path}: {err}") from None

    def __repr__(self) -> str:
        return (
            f"NeuronScores({self.method} of {self.model} on {self.task}: "
            f"{len(self.sites)} sites, {self.n_neurons} neurons)"
        )


def _site_row(site: Site) -> list:
    row = [site.stack, site.layer, site.hook_name, site.width]
    return row if site.module == "ffn" else [*row, site.module, site.group]


def _stable_order(values: Tensor) -> Tensor:
    """Indices by descending value, ties by ascending index."""
    return torch.from_numpy(np.lexsort((np.arange(values.numel()), -values.cpu().numpy())).copy())


def _ranks(values: Tensor) -> Tensor:
    order = _stable_order(values.double())
    r = torch.empty_like(order)
    r[order] = torch.arange(1, order.numel() + 1)
    return r


def stack_scores(results: Sequence[NeuronScores]) -> Tensor:
    """``[len(results), total neurons]`` of several scores objects over the same sites."""
    widths = results[0].widths
    for r in results[1:]:
        if r.widths != widths:
            raise ShapeMismatchError("scores over different sites cannot be stacked")
    return torch.stack([r.flat() for r in results])
