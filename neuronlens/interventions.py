"""Interventions on neuron sets: zero, gaussian noise, mean / baseline replacement, retain only.

Each intervention is a small class with one job, acting on a :class:`NeuronSet` (from scores,
a random control, or given by hand) at chosen token positions (``"all"``, ``"prompt"``: the
soft-prompt positions, ``"input"``: the rest). Use them as a context manager (several
compose; hooks are removed on exit, also after an exception) or per call::

    with intervene(model, Zero(top), n_prompt=tuned.n_tokens):
        evaluate(model, tuned, dev)
    evaluate(model, tuned, dev, interventions=[Zero(top)])      # the same, per call

* :class:`Zero` - suppression: the set's activations become 0.
* :class:`Noise` - add gaussian noise, absolute ``std`` or relative to each neuron's scale
  (``scale=`` per-neuron standard deviations, e.g. from :func:`activation_stats`); seeded.
* :class:`Replace` - replace by given values per neuron: the mean activation
  (:func:`activation_stats`) or the predictivity baseline per prompt token.
* :class:`Retain` - keep only the set: every other neuron of the set's sites becomes 0.

Sites on a T5 decoder stack have no prompt positions: there every position counts as input.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from neuronlens.capture import SiteBatch, capture
from neuronlens.errors import NeuronLensError, ShapeMismatchError
from neuronlens.models.model import NeuronModel
from neuronlens.probes.scores import NeuronSet

POSITIONS = ("all", "prompt", "input")


@dataclass
class Intervention:
    """Base class: ``neurons`` to act on, at ``positions`` (``all`` / ``prompt`` / ``input``)."""

    neurons: NeuronSet
    positions: str = "all"

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise NeuronLensError(f"positions must be one of {POSITIONS}, got {self.positions!r}")

    def sites(self) -> list[str]:
        return sorted(self.neurons.indices)

    def apply(self, site: str, acts: Tensor, where: Tensor) -> Tensor:
        """New activations ``[B, L, width]``; ``where`` is ``[L, 1]`` bool (positions acted on)."""
        raise NotImplementedError


@dataclass
class Zero(Intervention):
    """Suppress: the set's activations become 0."""

    def apply(self, site: str, acts: Tensor, where: Tensor) -> Tensor:
        hit = where & self.neurons.mask(site).to(acts.device)
        return acts.masked_fill(hit, 0.0)


@dataclass
class Retain(Intervention):
    """Keep only the set: every other neuron of its sites becomes 0."""

    def apply(self, site: str, acts: Tensor, where: Tensor) -> Tensor:
        hit = where & ~self.neurons.mask(site).to(acts.device)
        return acts.masked_fill(hit, 0.0)


@dataclass
class Noise(Intervention):
    """Add gaussian noise to the set's activations.

    ``std`` is absolute, or relative to ``scale[site]`` (``[width]`` per-neuron standard
    deviations) when ``scale`` is given. Seeded: the same seed gives the same noise.
    """

    std: float = 1.0
    scale: dict[str, Tensor] | None = None
    seed: int = 0
    _gen: torch.Generator | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.std < 0:
            raise NeuronLensError(f"noise std must be >= 0, got {self.std}")

    def reset(self) -> None:
        self._gen = None

    def apply(self, site: str, acts: Tensor, where: Tensor) -> Tensor:
        if self._gen is None:
            self._gen = torch.Generator(device="cpu").manual_seed(self.seed)
        noise = torch.randn(acts.shape, generator=self._gen, dtype=torch.float32).to(acts)
        std = torch.full((acts.shape[-1],), float(self.std), device=acts.device, dtype=acts.dtype)
        if self.scale is not None:
            std = std * self.scale[site].to(acts)
        hit = (where & self.neurons.mask(site).to(acts.device)).to(acts.dtype)
        return acts + noise * std * hit


@dataclass
class Replace(Intervention):
    """Replace the set's activations by ``values[site]``: ``[width]`` (e.g. the mean
    activation) or ``[p, width]`` per soft-prompt token (e.g. the predictivity baseline; only
    with ``positions="prompt"``)."""

    values: dict[str, Tensor] = field(default_factory=dict)

    def apply(self, site: str, acts: Tensor, where: Tensor) -> Tensor:
        if site not in self.values:
            raise NeuronLensError(f"Replace has no values for site {site}")
        v = self.values[site].to(acts)
        hit = where & self.neurons.mask(site).to(acts.device)
        if v.dim() == 2:  # per prompt token
            if self.positions != "prompt":
                raise NeuronLensError("per-prompt-token values need positions='prompt'")
            full = acts.new_zeros(acts.shape[1:])
            full[: v.shape[0]] = v
            v = full
        elif v.shape != acts.shape[-1:]:
            raise ShapeMismatchError(f"Replace values for {site} have shape {list(v.shape)}")
        return torch.where(hit, v.expand_as(acts), acts)


def _where(positions: str, length: int, n_prompt: int, decoder: bool, device) -> Tensor:
    w = torch.ones(length, 1, dtype=torch.bool, device=device)
    if decoder or positions == "all":
        return w
    if n_prompt == 0 and positions == "prompt":
        raise NeuronLensError("positions='prompt' but the forward has no soft prompt (n_prompt=0)")
    w[n_prompt:] = positions == "input"
    w[:n_prompt] = positions == "prompt"
    return w


@contextlib.contextmanager
def intervene(
    model: NeuronModel, *interventions: Intervention, n_prompt: int = 0
) -> Iterator[None]:
    """Apply interventions to every forward pass inside the ``with`` block.

    ``n_prompt`` tells where the soft prompt ends (positions ``"prompt"`` / ``"input"``).
    Hooks are removed on exit, also after an exception.
    """
    by_name = {s.name: s for s in model.sites}
    hooks = []
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise NeuronLensError(f"not an intervention: {iv!r}")
        for name in iv.sites():
            site = by_name.get(name)
            if site is None:
                raise NeuronLensError(
                    f"intervention on site {name!r}, which {model.name} does not have"
                )
            if site.width != iv.neurons.widths[name]:
                raise ShapeMismatchError(
                    f"neuron set for {name} has width {iv.neurons.widths[name]}, the site {site.width}"
                )
            decoder = site.stack == "decoder_blocks"

            def hook(acts, hook=None, iv=iv, name=name, decoder=decoder):
                where = _where(iv.positions, acts.shape[1], n_prompt, decoder, acts.device)
                return iv.apply(name, acts, where)

            hooks.append((site.hook_name, hook))
        if isinstance(iv, Noise):
            iv.reset()
    with model.hooks(fwd_hooks=hooks):
        yield


@dataclass
class ActivationStats:
    """Per-neuron mean and standard deviation over valid tokens (see :func:`activation_stats`)."""

    mean: dict[str, Tensor]
    std: dict[str, Tensor]


def activation_stats(
    model: NeuronModel,
    data,
    *,
    prompt: Tensor | None = None,
    sites=None,
    positions=None,
    batch_size: int = 32,
    progress: bool | None = None,
) -> ActivationStats:
    """Mean and std of every neuron's activation over ``data`` (streaming, float64 sums)."""
    sums: dict[str, Tensor] = {}
    sq: dict[str, Tensor] = {}
    count: dict[str, Tensor] = {}

    def reduce(sb: SiteBatch) -> None:
        v = sb.valid.unsqueeze(-1).to(torch.float64)
        a = sb.acts.double()
        k = sb.site.name
        sums[k] = sums.get(k, 0) + (a * v).sum((0, 1)).cpu()
        sq[k] = sq.get(k, 0) + (a * a * v).sum((0, 1)).cpu()
        count[k] = count.get(k, 0) + v.sum().cpu()

    capture(
        model,
        data,
        reduce,
        sites=sites,
        positions=positions,
        prompt=prompt,
        batch_size=batch_size,
        progress=progress,
    )
    mean = {k: (sums[k] / count[k]) for k in sums}
    std = {k: (sq[k] / count[k] - mean[k] ** 2).clamp_min(0).sqrt().float() for k in sums}
    return ActivationStats({k: v.float() for k, v in mean.items()}, std)


def as_interventions(items: Sequence[Intervention] | Intervention | None) -> list[Intervention]:
    if items is None:
        return []
    return [items] if isinstance(items, Intervention) else list(items)
