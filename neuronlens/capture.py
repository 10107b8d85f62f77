"""Activation capture: run batches through a model with hooks on neuron sites.

Everything that reads neuron activations builds on :func:`capture`. It tokenises and
batches the data, runs each batch with forward hooks on the chosen sites, selects the
chosen token positions, and hands every (site, batch) pair to a *reduction callback*
before the next site runs, so nothing forces all activations to be kept: memory is one
batch's activations of one site, plus whatever the callback keeps (a running sum, a
counter...). With ``grads=True`` it also computes the gradient of an objective with
respect to each site's activations and hands both together.

Token positions (``positions=``) are the selector objects of :mod:`neuronlens.positions`
(re-exported here): :class:`AllTokens`, :class:`PromptTokens`, :class:`AnswerToken`,
:class:`PromptAndAnswer`, :class:`Pooled`, ...

Positions index the full sequence the model sees, soft prompt included; where the prompt
and the answer sit comes from the forward pass itself (:class:`~neuronlens.models.layout.Layout`),
so a prompt placed after the input needs nothing special. Sites on a T5 decoder stack see
the decoder sequence (the decoder start token), and always read all of its positions.

For notebooks, :func:`collect_activations` returns small arrays for a handful of texts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

import neuronlens.checks as checks
from neuronlens.errors import (
    EmptyDataError,
    NeuronLensError,
    NonFiniteActivationError,
    ShapeMismatchError,
)
from neuronlens.models.families import ModelKind
from neuronlens.models.layout import Layout, Placement
from neuronlens.models.model import Encoded, NeuronModel
from neuronlens.models.placement import widen
from neuronlens.models.prefix import sequence_positions
from neuronlens.models.sites import Site, SiteSpec
from neuronlens.positions import (  # noqa: F401 (the selectors, also importable from here)
    AllTokens,
    AnswerToken,
    LastToken,
    MaskToken,
    Pooled,
    PositionContext,
    PositionRange,
    Positions,
    PromptAndAnswer,
    PromptTokens,
    blind_positions,
)
from neuronlens.progress import tqdm

# ---------------------------------------------------------------------------- batches


@dataclass
class CaptureBatch:
    """One batch of a capture run, as reduction callbacks see it."""

    index: Tensor
    """Indices of the batch's examples in the whole data, ``[B]``."""
    encoded: Encoded
    labels: Tensor | None
    n_prompt: int
    logits: Tensor | None = None
    """Set once the forward pass is done (callbacks running in hooks see ``None``)."""
    layout: Layout | None = None
    """Where the soft prompt and the answer sit (set once the forward has placed them)."""


@dataclass
class SiteBatch:
    """One site's activations for one batch: what a reduction callback receives.

    Attributes:
        site: the neuron site.
        acts: ``[B, n, width]`` activations at the selected positions (detached);
            ``[B, n, width * site.group]`` at a site of whole attention heads.
        valid: ``[B, n]`` bool, False at padding (and excluded prompt positions).
        grads: ``[B, n, width]`` gradients of the objective w.r.t. ``acts`` (``grads=True``).
        batch: the batch (indices, inputs, labels).
        positions: position indices ``[B, n]`` in the full sequence, or None for all.
    """

    site: Site
    acts: Tensor
    valid: Tensor
    batch: CaptureBatch
    grads: Tensor | None = None
    positions: Tensor | None = None


Reducer = Callable[[SiteBatch], None]
Objective = Callable[[Tensor, CaptureBatch], Tensor]
Forward = Callable[[Encoded, Tensor | None, bool], Tensor]


@dataclass
class CaptureData:
    """Data for a capture run: texts (tokenised batch by batch) or encoded inputs, plus labels.

    Texts are tokenised lazily, one batch at a time, so memory does not grow with the data.
    """

    encoded: Encoded | None = None
    texts: list[str] | None = None
    texts_b: list[str] | None = None
    labels: Tensor | None = None
    max_length: int | None = 512

    def __len__(self) -> int:
        return len(self.encoded) if self.encoded is not None else len(self.texts or ())

    def batch(self, model: NeuronModel, rows: Tensor) -> Encoded:
        """The encoded examples ``rows`` (trimmed to their longest sequence)."""
        if self.encoded is not None:
            return self.encoded[rows.to(self.encoded.input_ids.device)]
        idx = rows.tolist()
        texts_b = None if self.texts_b is None else [self.texts_b[i] for i in idx]
        return model.encode([self.texts[i] for i in idx], texts_b, max_length=self.max_length)

    def select(self, rows: Tensor) -> CaptureData:
        """A subset of the examples (e.g. one process's shard)."""
        idx = rows.tolist()
        return CaptureData(
            encoded=None
            if self.encoded is None
            else self.encoded[rows.to(self.encoded.input_ids.device)],
            texts=None if self.texts is None else [self.texts[i] for i in idx],
            texts_b=None if self.texts_b is None else [self.texts_b[i] for i in idx],
            labels=None if self.labels is None else self.labels[rows.to(self.labels.device)],
            max_length=self.max_length,
        )


def as_capture_data(
    model: NeuronModel,
    data,
    labels: Sequence[int] | Tensor | None = None,
    *,
    max_length: int | None = 512,
) -> CaptureData:
    """Normalise what users pass as data.

    Accepts a list of strings, a pair ``(texts, texts_b)`` of lists, an :class:`Encoded`
    batch, a :class:`CaptureData`, or any object with ``texts`` (and optionally ``texts_b``
    and ``labels``) attributes, such as a task's data split.
    """
    if isinstance(data, CaptureData):
        cdata = data
    elif isinstance(data, Encoded):
        cdata = CaptureData(encoded=data)
    elif isinstance(data, str):
        cdata = CaptureData(texts=[data])
    elif hasattr(data, "texts"):
        texts_b = getattr(data, "texts_b", None)
        cdata = CaptureData(
            texts=list(data.texts),
            texts_b=None if texts_b is None else list(texts_b),
            labels=None if getattr(data, "labels", None) is None else torch.as_tensor(data.labels),
        )
    elif isinstance(data, tuple) and len(data) == 2 and not isinstance(data[0], str):
        if len(data[0]) != len(data[1]):
            raise ShapeMismatchError(
                f"texts ({len(data[0])}) and texts_b ({len(data[1])}) differ in length"
            )
        cdata = CaptureData(texts=list(data[0]), texts_b=list(data[1]))
    elif isinstance(data, Sequence):
        if not all(isinstance(t, str) for t in data):
            raise NeuronLensError("data must be strings, a (texts, texts_b) pair, or Encoded")
        cdata = CaptureData(texts=list(data))
    else:
        raise NeuronLensError(
            f"cannot read data of type {type(data).__name__}: pass a list of strings, a "
            "(texts, texts_b) pair, an Encoded batch or a task split"
        )
    if len(cdata) == 0:
        raise EmptyDataError("the data has no examples: pass at least one")
    if cdata.encoded is None:
        cdata.max_length = max_length
    lab = labels if labels is not None else cdata.labels
    if lab is not None:
        lab = torch.as_tensor(lab, dtype=torch.long)
        if lab.dim() != 1 or lab.shape[0] != len(cdata):
            raise ShapeMismatchError(
                f"{lab.shape[0] if lab.dim() else 'a scalar'} labels for {len(cdata)} examples: "
                "give one label per example"
            )
        cdata.labels = lab.to(model.device)
    return cdata


# ---------------------------------------------------------------------------- capture


def capture(
    model: NeuronModel,
    data,
    reduce: Reducer,
    *,
    sites: SiteSpec | Sequence[SiteSpec] | None = None,
    positions: Positions | None = None,
    labels: Sequence[int] | Tensor | None = None,
    prompt: Tensor | None = None,
    placement: Placement | None = None,
    grads: bool = False,
    objective: Objective | None = None,
    batch_size: int = 32,
    max_length: int | None = 512,
    progress: bool | None = None,
    check_finite: bool = True,
    on_batch_end: Callable[[CaptureBatch], None] | None = None,
    forward: Forward | None = None,
) -> None:
    """Run ``data`` through ``model`` and hand each site's activations to ``reduce``.

    Args:
        data: texts, ``(texts, texts_b)``, an :class:`Encoded` batch, or a task split.
        reduce: called with a :class:`SiteBatch` once per site per batch.
        sites, positions: which sites (``None``: every FFN) and token positions (default
            :class:`AllTokens`).
        labels: one integer per example (or taken from the data), passed on in the batch.
        prompt, placement: a soft prompt ``[p, d_model]`` and where the model's own forward
            puts it (default before the input; a ``forward`` through a head places it itself).
        grads, objective: also hand over gradients of ``objective(logits, batch) -> [B]``
            (summed) w.r.t. the activations, e.g. of the gold-label logit.
        batch_size, max_length, progress: batching, truncation, and a progress bar
            (``None``: when there are 5 or more batches).
        check_finite: raise :class:`NonFiniteActivationError` on NaN/inf activations.
        on_batch_end: called with the :class:`CaptureBatch` (logits set) after each batch.
        forward: ``f(encoded, prompt, embeds_require_grad) -> logits`` run instead of the
            model's own forward, e.g. a head's class logits; it must run the model.

    Hooks are removed when the call returns, also when it raised.

    Examples:
        >>> mean = RunningMean()
        >>> capture(model, texts, mean, sites=["blocks.5"], positions=LastToken())  # doctest: +SKIP
    """
    if batch_size < 1:
        raise NeuronLensError(f"batch_size must be at least 1, got {batch_size}")
    if grads and objective is None:
        raise NeuronLensError(
            "grads=True needs objective=f(logits, batch) -> [B], e.g. the gold-label logit"
        )
    cdata = as_capture_data(model, data, labels, max_length=max_length)
    chosen = model.select_sites(sites)
    positions = positions or AllTokens()
    checks.instance("positions", positions, Positions, "a Positions object, e.g. LastToken()")
    n = len(cdata)
    n_batches = (n + batch_size - 1) // batch_size
    show = progress if progress is not None else n_batches >= 5
    n_prompt = sequence_positions(prompt)

    bar = tqdm(total=n_batches, desc=f"capture {model.name}", disable=not show, leave=False)
    try:
        for batch in _batches(model, cdata, batch_size, n_prompt):
            selector = _Selector(model, batch, positions)
            args = (reduce, prompt, placement, grads, objective, check_finite, forward)
            _run_batch(model, batch, chosen, selector, *args)
            if on_batch_end is not None:
                on_batch_end(batch)
            bar.update(1)
    finally:
        bar.close()


def _batches(model: NeuronModel, cdata: CaptureData, batch_size: int, n_prompt: int):
    """The data as :class:`CaptureBatch` es of ``batch_size`` examples, tokenised lazily."""
    n = len(cdata)
    for start in range(0, n, batch_size):
        rows = torch.arange(start, min(start + batch_size, n))
        labels = None if cdata.labels is None else cdata.labels[start : start + len(rows)]
        yield CaptureBatch(rows, cdata.batch(model, rows), labels, n_prompt)


class _Selector:
    """The positions of one batch, per site; chosen once the forward has placed the prompt
    (from the model's active layout), so they follow wherever the head put it."""

    def __init__(self, model: NeuronModel, batch: CaptureBatch, positions: Positions) -> None:
        self.model, self.batch, self.positions = model, batch, positions
        self.encoder: tuple[Tensor | None, Tensor] | None = None
        self.decoder_stack = (
            "decoder_blocks" if model.family.kind is ModelKind.ENCODER_DECODER else None
        )

    def __call__(self, site: Site) -> tuple[Tensor | None, Tensor]:
        enc = self.batch.encoded
        if site.stack == self.decoder_stack:
            return None, torch.ones_like(enc.decoder_input_ids, dtype=torch.bool)
        if self.encoder is None:
            layout = self.model.active_layout
            if layout is None:  # a custom forward that bypassed NeuronModel: a prefix prompt
                layout = self.model.layout(enc, self.batch.n_prompt)
            if layout.n_prompt != self.batch.n_prompt:
                raise NeuronLensError(
                    f"capture was given a soft prompt of {self.batch.n_prompt} tokens, but the "
                    f"forward pass ran with {layout.n_prompt}: pass the prompt the forward uses"
                )
            self.batch.layout = layout
            ctx = PositionContext(layout, self.model.tokenizer.mask_token_id)
            self.encoder = self.positions.select(ctx)
        return self.encoder


def _select(
    acts: Tensor, selection: tuple[Tensor | None, Tensor], positions: Positions
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(acts, valid, index)`` at the selected positions (pooled for :class:`Pooled`)."""
    idx, valid = selection
    sel = _gather(acts, idx)
    if isinstance(positions, Pooled):
        sel, valid = Pooled.pool(sel, valid)
        return sel, valid, None
    return sel, valid, idx


def _gather(acts: Tensor, idx: Tensor | None) -> Tensor:
    if idx is None:
        return acts
    return acts.gather(1, idx.unsqueeze(-1).expand(-1, -1, acts.shape[-1]))


def flat_heads(acts: Tensor) -> Tensor:
    """``[B, L, heads, head_dim]`` (the attention output projection's input, as the bridge
    hooks it) as ``[B, L, heads * head_dim]``; other activations unchanged."""
    return acts.flatten(-2) if acts.dim() == 4 else acts


def _check(site: Site, t: Tensor, what: str) -> None:
    # A sum is NaN/inf whenever an element is; only then run the exact (slower) test,
    # which also rules out a sum of finite values that merely overflowed.
    if not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
        raise NonFiniteActivationError(
            f"NaN or infinite {what} at site {site.name}: check the model's dtype (float16 "
            "overflow?), its weights, and the soft prompt"
        )


def _run_batch(
    model: NeuronModel,
    batch: CaptureBatch,
    chosen: list[Site],
    selector: _Selector,
    reduce: Reducer,
    prompt: Tensor | None,
    placement: Placement | None,
    grads: bool,
    objective: Objective | None,
    check_finite: bool,
    forward: Forward | None,
) -> None:
    live: dict[str, tuple[Tensor, tuple[Tensor | None, Tensor]]] = {}
    fired: set[str] = set()
    positions = selector.positions

    def make_hook(site: Site):
        def hook(acts: Tensor, hook=None) -> Tensor | None:
            if grads and not acts.requires_grad:
                # a value the input cannot reach (T5's first decoder self-attention reads
                # only the decoder's start token): constant, but its effect on the output,
                # the gradient, is still defined; make it a leaf so autograd gives it
                acts = acts.detach().requires_grad_(True)
            shape = acts.shape
            acts = flat_heads(acts)
            if acts.shape[-1] != site.hooked_width:
                raise ShapeMismatchError(
                    f"site {site.name} produced {acts.shape[-1]} values, expected "
                    f"{site.hooked_width}"
                )
            fired.add(site.name)
            selection = selector(site)
            if grads:
                # the hook's output replaces the module's value: gradients reach this view
                live[site.name] = (acts, selection)
                return acts.unflatten(-1, shape[-2:]) if len(shape) == 4 else acts
            sel, valid, idx = _select(acts, selection, positions)
            if check_finite:
                _check(site, sel, "activations")
            reduce(SiteBatch(site, sel, valid, batch, positions=idx))
            return None

        return hook

    fwd = [(site.hook_name, make_hook(site)) for site in chosen]
    grad_ctx = torch.enable_grad() if grads else torch.no_grad()
    with grad_ctx, model.hooks(fwd_hooks=fwd):
        if forward is None:
            logits = model.forward(
                batch.encoded, prompt=prompt, placement=placement, embeds_require_grad=grads
            )
        else:
            logits = forward(batch.encoded, prompt, grads)
        batch.logits = logits.detach()
        missed = [s.name for s in chosen if s.name not in fired]
        if missed:
            raise NeuronLensError(
                f"the forward pass never reached sites {missed}: choose sites it runs through "
                "(e.g. a head that reads the encoder does not run a T5 decoder)"
            )
        if grads:
            assert objective is not None
            target = objective(logits, batch)
            if target.dim() > 0 and target.shape[0] != len(batch.encoded):
                raise ShapeMismatchError(
                    f"objective returned shape {list(target.shape)}; expected [B] or a scalar"
                )
            tensors = [live[s.name][0] for s in chosen]
            gs = torch.autograd.grad(target.sum(), tensors, allow_unused=True)
            for site, acts, g in zip(chosen, tensors, gs, strict=True):
                selection = live[site.name][1]
                g = torch.zeros_like(acts) if g is None else g
                sel, valid, idx = _select(acts.detach(), selection, positions)
                gsel = _select(g, selection, positions)[0]
                if check_finite:
                    _check(site, sel, "activations")
                    _check(site, gsel, "gradients")
                reduce(SiteBatch(site, sel, valid, batch, grads=gsel, positions=idx))


# ---------------------------------------------------------------------------- reducers


@dataclass
class RunningMean:
    """Mean activation per site over valid tokens (``per_position``: per selected position).

    A streaming reduction: memory is ``sites x width`` (x positions), whatever the data size.
    States of two shards merge with :meth:`merge`.
    """

    per_position: bool = False
    sums: dict[str, Tensor] = field(default_factory=dict)
    counts: dict[str, Tensor] = field(default_factory=dict)

    def __call__(self, sb: SiteBatch) -> None:
        acts = widen(sb.acts)
        valid = sb.valid.to(acts.dtype)
        if self.per_position:
            s = torch.einsum("bn,bnd->nd", valid, acts)
            c = valid.sum(0)
        else:
            s = torch.einsum("bn,bnd->d", valid, acts)
            c = valid.sum()
        key = sb.site.name
        if key in self.sums:
            self.sums[key] += s.double()
            self.counts[key] += c.double()
        else:
            self.sums[key] = s.double()
            self.counts[key] = c.double()

    def merge(self, other: RunningMean) -> RunningMean:
        out = RunningMean(self.per_position)
        for key in self.sums.keys() | other.sums.keys():
            parts = [m for m in (self, other) if key in m.sums]
            out.sums[key] = sum(m.sums[key] for m in parts)
            out.counts[key] = sum(m.counts[key] for m in parts)
        return out

    def mean(self, site: Site | str) -> Tensor:
        key = site.name if isinstance(site, Site) else site
        count = self.counts[key]
        if self.per_position:
            count = count.unsqueeze(-1)
        return (self.sums[key] / count).float()


# ---------------------------------------------------------------------------- notebooks


@dataclass
class ActivationArrays:
    """Small activation arrays for a handful of texts (see :func:`collect_activations`).

    ``acts[site_name]`` is ``[N, L, width]`` (zeros where ``valid`` is False), ``valid`` is
    ``[N, L]``, ``tokens[i]`` the string tokens of example ``i`` at the selected positions
    (prompt positions shown as ``<prompt:k>``).
    """

    acts: dict[str, Tensor]
    valid: dict[str, Tensor]
    tokens: list[list[str]]
    sites: list[Site]

    def __getitem__(self, site: str | Site) -> Tensor:
        return self.acts[site.name if isinstance(site, Site) else site]


MAX_COLLECT = 2048


def collect_activations(
    model: NeuronModel,
    texts: str | Sequence[str],
    *,
    sites: SiteSpec | Sequence[SiteSpec] | None = None,
    positions: Positions | None = None,
    prompt: Tensor | None = None,
    placement: Placement | None = None,
    batch_size: int = 32,
    progress: bool | None = False,
) -> ActivationArrays:
    """Activations of a few texts, kept in memory, for looking at in a notebook.

    For anything large, use :func:`capture` with a reduction callback instead.

    Examples:
        >>> acts = collect_activations(model, ["a fine film"], positions=LastToken())  # doctest: +SKIP
        >>> acts["blocks.5"].shape   # [1, 1, width]  # doctest: +SKIP
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    if len(texts) > MAX_COLLECT:
        raise NeuronLensError(
            f"collect_activations keeps every activation in memory and takes at most "
            f"{MAX_COLLECT} texts; use neuronlens.capture with a reduction for {len(texts)}"
        )
    cdata = as_capture_data(model, texts)
    chunks: dict[str, list[tuple[Tensor, Tensor]]] = {}

    def keep(sb: SiteBatch) -> None:
        chunks.setdefault(sb.site.name, []).append((sb.acts.cpu(), sb.valid.cpu()))

    capture(
        model,
        cdata,
        keep,
        sites=sites,
        positions=positions,
        prompt=prompt,
        placement=placement,
        batch_size=batch_size,
        progress=progress,
    )
    chosen = model.select_sites(sites)
    acts, valid = {}, {}
    for site in chosen:
        parts = chunks[site.name]
        length = max(a.shape[1] for a, _ in parts)
        acts[site.name] = torch.cat(
            [
                torch.nn.functional.pad(a * v.unsqueeze(-1), (0, 0, 0, length - a.shape[1]))
                for a, v in parts
            ]
        )
        valid[site.name] = torch.cat(
            [torch.nn.functional.pad(v, (0, length - v.shape[1])) for _, v in parts]
        )
    enc = cdata.batch(model, torch.arange(len(cdata)))
    tokens = _token_strings(model, enc, prompt, positions or AllTokens(), placement)
    return ActivationArrays(acts, valid, tokens, chosen)


def _token_strings(
    model, enc: Encoded, prompt, positions: Positions, placement: Placement | None = None
) -> list[list[str]]:
    n_prompt = sequence_positions(prompt)
    out = []
    for i in range(len(enc)):
        row = enc[i : i + 1]
        layout = model.layout(row, n_prompt, placement)
        words = iter(model.tokenizer.convert_ids_to_tokens(row.input_ids[0].tolist()))
        in_prompt = layout.prompt_mask()[0].tolist()
        k = iter(range(n_prompt))
        toks = [f"<prompt:{next(k)}>" if p else next(words) for p in in_prompt]
        idx, _ = positions.select(PositionContext(layout, model.tokenizer.mask_token_id))
        if isinstance(positions, Pooled):
            out.append(["<pooled>"])
            continue
        out.append(
            toks if idx is None else [toks[j] if j < len(toks) else "" for j in idx[0].tolist()]
        )
    return out
