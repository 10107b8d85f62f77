"""Interventions on neuron sets: zero, gaussian noise, mean / baseline replacement, retain only.

Each intervention is a small class with one job, acting on a :class:`NeuronSet` (from scores,
a random control, or given by hand) at chosen token positions (``"all"``, ``"prompt"``: the
soft-prompt positions, ``"input"``: the rest). Use them as a context manager (several
compose; hooks are removed on exit, also after an exception) or per call::

    with intervene(model, Zero(top)):
        evaluate(model, tuned, dev)
    evaluate(model, tuned, dev, interventions=[Zero(top)])      # the same, per call

* :class:`Zero` - suppression: the set's activations become 0.
* :class:`Noise` - add gaussian noise, absolute ``std`` or relative to each neuron's scale
  (``scale=`` per-neuron standard deviations, e.g. from :func:`activation_stats`); one draw
  per token (``per="token"``) or one per example and neuron, added at every position
  (``per="example"``, as the original skill-neuron code does); seeded.
* :class:`Replace` - replace by given values per neuron: the mean activation over all
  positions (:func:`activation_stats`) or the predictivity baseline per prompt token.
* :class:`Retain` - keep only the set: every other neuron of the set's sites becomes 0.

Which positions are the soft prompt is read from the forward pass itself (the prompt may sit
before or after the input), so the hooks need no ``n_prompt``. Sites on a T5 decoder stack
have no prompt positions: there every position counts as input.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

import neuronlens.checks as checks
from neuronlens.capture import SiteBatch, capture, flat_heads
from neuronlens.errors import NeuronLensError, ShapeMismatchError, SiteError
from neuronlens.models.layout import Layout, make_layout
from neuronlens.models.model import NeuronModel
from neuronlens.neurons import NeuronSet

POSITIONS = ("all", "prompt", "input")
NOISE_PER = ("token", "example")


@dataclass
class Intervention:
    """Base class: ``neurons`` to act on, at ``positions`` (``all`` / ``prompt`` / ``input``)."""

    neurons: NeuronSet
    positions: str = "all"

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise NeuronLensError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if not isinstance(self.neurons, NeuronSet):
            raise NeuronLensError(
                f"an intervention acts on a NeuronSet (e.g. scores.top(percent=5)), got "
                f"{type(self.neurons).__name__}"
            )

    def sites(self) -> list[str]:
        return sorted(self.neurons.indices)

    def apply(self, site: str, acts: Tensor, where: Tensor, layout: Layout | None = None) -> Tensor:
        """New activations ``[B, L, width]``; ``where`` is ``[B, L, 1]`` bool (positions acted
        on), ``layout`` where the batch's soft prompt sits (``None`` on a T5 decoder)."""
        raise NotImplementedError


@dataclass
class Zero(Intervention):
    """Suppress: the set's activations become 0."""

    def apply(self, site: str, acts: Tensor, where: Tensor, layout: Layout | None = None) -> Tensor:
        hit = where & self.neurons.mask(site).to(acts.device)
        return acts.masked_fill(hit, 0.0)


@dataclass
class Retain(Intervention):
    """Keep only the set: every other neuron of its sites becomes 0."""

    def apply(self, site: str, acts: Tensor, where: Tensor, layout: Layout | None = None) -> Tensor:
        hit = where & ~self.neurons.mask(site).to(acts.device)
        return acts.masked_fill(hit, 0.0)


@dataclass
class Noise(Intervention):
    """Add gaussian noise to the set's activations.

    ``std`` is absolute, or relative to ``scale[site]`` (``[width]`` per-neuron standard
    deviations) when ``scale`` is given. ``per="token"``: a fresh draw at every position;
    ``per="example"``: one draw per example and neuron, added at every position (the original
    skill-neuron code, std 0.1). Seeded: the same seed gives the same noise.
    """

    std: float = 1.0
    scale: dict[str, Tensor] | None = None
    seed: int = 0
    per: str = "token"
    _gen: torch.Generator | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if (
            isinstance(self.std, bool)
            or not isinstance(self.std, numbers.Real)
            or not 0 <= self.std < math.inf
        ):
            raise NeuronLensError(
                f"noise std must be a finite number >= 0 (absolute, or a multiple of scale=), "
                f"got {self.std!r}"
            )
        if self.per not in NOISE_PER:
            raise NeuronLensError(f"per must be one of {NOISE_PER}, got {self.per!r}")
        checks.integer("Noise seed", self.seed)
        if self.scale is not None:
            self.scale = _site_values("Noise(scale=...)", self.scale, self.neurons)
            for site, v in self.scale.items():
                if bool((v < 0).any()):
                    raise NeuronLensError(
                        f"Noise(scale=...) for site {site} holds {int((v < 0).sum())} negative "
                        "values: a scale is a per-neuron standard deviation, >= 0"
                    )

    def reset(self) -> None:
        self._gen = None

    def apply(self, site: str, acts: Tensor, where: Tensor, layout: Layout | None = None) -> Tensor:
        if self._gen is None:
            self._gen = torch.Generator(device="cpu").manual_seed(self.seed)
        shape = acts.shape if self.per == "token" else (acts.shape[0], 1, acts.shape[-1])
        noise = torch.randn(shape, generator=self._gen, dtype=torch.float32).to(acts)
        std = torch.full((acts.shape[-1],), float(self.std), device=acts.device, dtype=acts.dtype)
        if self.scale is not None:
            if site not in self.scale:
                raise NeuronLensError(
                    f"Noise(scale=...) has no per-neuron scale for site {site}: give one for "
                    "every site of the neuron set (e.g. activation_stats(...).std)"
                )
            std = std * self.scale[site].to(acts)
        hit = (where & self.neurons.mask(site).to(acts.device)).to(acts.dtype)
        return acts + noise * std * hit


@dataclass
class Replace(Intervention):
    """Replace the set's activations by ``values[site]``: ``[width]`` (e.g. the mean
    activation over all positions) or ``[p, width]`` per soft-prompt token (e.g. the
    predictivity baseline; only with ``positions="prompt"``)."""

    values: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.values = _site_values(
            "Replace values", self.values, self.neurons, per_token=self.positions == "prompt"
        )

    def apply(self, site: str, acts: Tensor, where: Tensor, layout: Layout | None = None) -> Tensor:
        if site not in self.values:
            raise NeuronLensError(f"Replace has no values for site {site}")
        v = self.values[site].to(acts)
        hit = where & self.neurons.mask(site).to(acts.device)
        if v.dim() == 2:  # per prompt token, wherever the prompt sits
            if self.positions != "prompt" or layout is None:
                raise NeuronLensError("per-prompt-token values need positions='prompt'")
            if v.shape != (layout.n_prompt, acts.shape[-1]):
                raise ShapeMismatchError(
                    f"Replace values for {site} are {list(v.shape)}, the prompt has "
                    f"{layout.n_prompt} tokens of {acts.shape[-1]} neurons"
                )
            idx = layout.prompt_index().unsqueeze(-1).expand(-1, -1, acts.shape[-1])
            v = acts.new_zeros(acts.shape).scatter(1, idx, v.expand(acts.shape[0], -1, -1))
        elif v.shape != acts.shape[-1:]:
            raise ShapeMismatchError(f"Replace values for {site} have shape {list(v.shape)}")
        return torch.where(hit, v.expand_as(acts), acts)


def _site_values(
    what: str, values, neurons: NeuronSet, *, per_token: bool = False
) -> dict[str, Tensor]:
    """``values`` (site name -> ``[width]`` tensor, or ``[p, width]`` per prompt token where
    ``per_token``) checked for every site of ``neurons``: present, of the site's width, finite.
    Sites outside the set are kept as they are (e.g. the statistics of every site)."""
    if not isinstance(values, Mapping):
        raise NeuronLensError(
            f"{what} must be a dict site name -> [width] tensor, one per site of the neuron set "
            f"(e.g. activation_stats(...).std), got {type(values).__name__} {values!r:.60}"
        )
    out = dict(values)
    shape = "[width]" + (" or [p, width] (per prompt token)" if per_token else "")
    for site in sorted(neurons.indices):
        if site not in values:
            per = "per-neuron scale" if what.startswith("Noise") else "values"
            raise NeuronLensError(
                f"{what} has no {per} for site {site}: give one for every site of the neuron "
                f"set ({sorted(neurons.indices)}), e.g. activation_stats(...).std or .mean"
            )
        v = values[site]
        if not isinstance(v, Tensor):
            try:
                v = torch.as_tensor(v, dtype=torch.float32)
            except (TypeError, ValueError, RuntimeError):
                raise NeuronLensError(
                    f"{what} for site {site} must be a {shape} tensor, got {type(v).__name__}"
                ) from None
        width = neurons.widths[site]
        if not (v.shape == (width,) or (per_token and v.dim() == 2 and v.shape[1] == width)):
            raise ShapeMismatchError(
                f"{what} for site {site} has shape {list(v.shape)}, but the site has {width} "
                f"neurons: give {shape} values"
            )
        if not v.is_floating_point():
            v = v.float()
        checks.finite_tensor(f"{what} for site {site}", v, hint="give finite values")
        out[site] = v
    return out


def _where(positions: str, layout: Layout | None, acts: Tensor) -> Tensor:
    """``[B, L, 1]`` bool: the positions an intervention acts on (``layout`` None: a decoder)."""
    if layout is None or positions == "all":
        return torch.ones(*acts.shape[:2], 1, dtype=torch.bool, device=acts.device)
    if layout.n_prompt == 0 and positions == "prompt":
        raise NeuronLensError("positions='prompt' but the forward has no soft prompt")
    in_prompt = layout.prompt_mask().to(acts.device).unsqueeze(-1)
    return in_prompt if positions == "prompt" else ~in_prompt


def _site(model: NeuronModel, iv: Intervention, name: str):
    """The model's site ``name``, checked against the intervention's neuron set."""
    try:
        site = model.site(name)
    except SiteError:
        raise NeuronLensError(
            f"intervention on site {name!r}, which {model.name} does not have"
        ) from None
    if site.width != iv.neurons.widths[name]:
        raise ShapeMismatchError(
            f"neuron set for {name} has width {iv.neurons.widths[name]}, the site {site.width}"
        )
    if site.group > 1 and (
        isinstance(iv, Replace) or (isinstance(iv, Noise) and iv.scale is not None)
    ):
        raise NeuronLensError(
            f"{type(iv).__name__} with per-unit values cannot act on whole heads ({name}): "
            "use Zero, Retain or Noise with an absolute std, or the attn_out features"
        )
    return site


def _apply_grouped(iv, name, acts, where, layout, group):
    """``iv`` on a site of whole heads: ``[B, L, heads * group]`` seen as ``[B, L * group,
    heads]``, so a head's every value follows its unit's fate."""
    length = acts.shape[1]
    view = acts.unflatten(-1, (-1, group)).transpose(-1, -2).flatten(1, 2)
    out = iv.apply(name, view, where.repeat_interleave(group, dim=1), layout)
    return out.unflatten(1, (length, group)).transpose(-1, -2).flatten(-2)


def _batch_layout(model: NeuronModel, acts: Tensor, n_prompt: int | None) -> Layout:
    """The running forward's layout, checked against ``n_prompt`` when that was given."""
    layout = model.active_layout
    if layout is None:  # a forward that bypassed NeuronModel: a prefix prompt of n_prompt
        p = n_prompt or 0
        if p > acts.shape[1]:
            raise NeuronLensError(
                f"intervene(n_prompt={p}) but the sequence has only {acts.shape[1]} positions"
            )
        mask = torch.ones(acts.shape[0], acts.shape[1] - p, dtype=torch.long, device=acts.device)
        return make_layout(torch.zeros_like(mask), mask, p)
    if n_prompt is not None and n_prompt != layout.n_prompt:
        raise NeuronLensError(
            f"intervene(n_prompt={n_prompt}) but the forward pass has a soft prompt of "
            f"{layout.n_prompt} tokens: leave n_prompt out (it is read from the forward)"
        )
    return layout


@contextlib.contextmanager
def intervene(
    model: NeuronModel, *interventions: Intervention, n_prompt: int | None = None
) -> Iterator[None]:
    """Apply interventions to every forward pass inside the ``with`` block.

    Where the soft prompt sits (positions ``"prompt"`` / ``"input"``) is read from each
    forward pass; ``n_prompt``, if given, is checked against it. Hooks are removed on exit,
    also after an exception.

    Examples:
        >>> with intervene(model, Zero(top), Noise(other, std=0.1, per="example")):  # doctest: +SKIP
        ...     evaluate(model, tuned, dev)
    """
    if n_prompt is not None and (
        isinstance(n_prompt, bool) or not isinstance(n_prompt, int) or n_prompt < 0
    ):
        raise NeuronLensError(f"n_prompt must be a prompt length >= 0 (or None), got {n_prompt!r}")
    hooks = []
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise NeuronLensError(f"not an intervention: {iv!r}")
        for name in iv.sites():
            site = _site(model, iv, name)
            decoder = site.stack == "decoder_blocks"

            def hook(acts, hook=None, iv=iv, name=name, decoder=decoder, group=site.group):
                shape, acts = acts.shape, flat_heads(acts)
                layout = None if decoder else _batch_layout(model, acts, n_prompt)
                where = _where(iv.positions, layout, acts)
                if group == 1:
                    return iv.apply(name, acts, where, layout).reshape(shape)
                return _apply_grouped(iv, name, acts, where, layout, group).reshape(shape)

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
    forward=None,
    batch_size: int = 32,
    progress: bool | None = None,
) -> ActivationStats:
    """Mean and std of every neuron's activation over ``data`` (streaming, float64 sums), at
    ``positions`` (default every non-padding token). ``forward``: run the batches through a
    head (``head.class_logits``, so the prompt sits where the head puts it), as
    :func:`~neuronlens.analysis.prompt_activation_stats` does for a tuned prompt."""
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
        forward=forward,
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
