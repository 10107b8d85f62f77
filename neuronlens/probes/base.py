"""The probe API every neuron score goes through, and the runner (one or several processes).

A probe names its sites and token positions, receives each batch's activations (and
gradients when it asks), keeps a **mergeable** state, and finishes into
:class:`~neuronlens.neurons.NeuronScores`. The state is a ``dict[str, Tensor]`` of sums
and counts: the state of two shards, merged (added), equals the state of their union. That
is what lets :func:`run_probe` run on one shard per process under ``torchrun`` and reduce
the states across processes.

A custom probe in a few lines (fraction of tokens on which each neuron fires)::

    class FiringRate(Probe):
        name = "firing_rate"

        def init_state(self, sites):
            return {f"{s.name}/fired": torch.zeros(s.width, dtype=torch.float64) for s in sites} | {
                f"{s.name}/tokens": torch.zeros((), dtype=torch.float64) for s in sites}

        def update(self, state, sb):
            v = sb.valid.unsqueeze(-1)
            state[f"{sb.site.name}/fired"] += ((sb.acts > 0) & v).sum((0, 1))
            state[f"{sb.site.name}/tokens"] += sb.valid.sum()

        def finish(self, state, sites, info):
            return {s.name: state[f"{s.name}/fired"] / state[f"{s.name}/tokens"] for s in sites}

    scores = run_probe(model, FiringRate(), texts)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from neuronlens.capture import (
    AllTokens,
    CaptureData,
    Positions,
    SiteBatch,
    as_capture_data,
    capture,
)
from neuronlens.errors import EmptyDataError, NeuronLensError, SiteError
from neuronlens.models.model import NeuronModel
from neuronlens.models.placement import dtype_name, resolve_dtype
from neuronlens.models.sites import Site, SiteSpec
from neuronlens.neurons import NeuronScores

State = dict[str, Tensor]


class Probe:
    """Base class of probes. Override :meth:`init_state`, :meth:`update` and :meth:`finish`.

    Class attributes: ``name`` (the method name in the scores), ``needs_grads`` (ask for
    gradients of the objective w.r.t. activations), ``positions`` (token positions),
    ``grouped`` (the probe scores sites whose units span several values, such as whole
    attention heads: ``sb.acts`` is then ``[B, n, width * site.group]``).
    """

    name: str = "probe"
    needs_grads: bool = False
    positions: Positions = AllTokens()
    grouped: bool = False

    def init_state(self, sites: Sequence[Site]) -> State:
        raise NotImplementedError

    def update(self, state: State, sb: SiteBatch) -> None:
        raise NotImplementedError

    def merge(self, a: State, b: State) -> State:
        """Combine two shards' states (default: add every tensor)."""
        if a.keys() != b.keys():
            raise NeuronLensError("cannot merge probe states with different keys")
        return {k: a[k] + b[k] for k in a}

    def finish(self, state: State, sites: Sequence[Site], info: ProbeInfo) -> dict[str, Tensor]:
        """Scores per site (``[width]`` each) from the final state."""
        raise NotImplementedError


@dataclass
class ProbeInfo:
    """What a probe's ``finish`` may need to know about the run."""

    model: NeuronModel
    n_examples: int
    meta: dict = field(default_factory=dict)


def init_distributed(backend: str | None = None) -> tuple[int, int]:
    """Initialise torch.distributed from ``torchrun``'s environment; returns ``(rank, world)``.

    Backend: ``nccl`` when CUDA is available, else ``gloo`` (CPU). On GPU each process uses
    the device ``cuda:$LOCAL_RANK``; load the model there (``load_model(..., device=...)``).
    Every probe call then runs on this process's shard and reduces states across processes.
    """
    import os

    import torch.distributed as dist

    if "RANK" not in os.environ:
        raise NeuronLensError("init_distributed() runs under torchrun (RANK is not set)")
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def shard(data: CaptureData) -> CaptureData:
    """This process's shard (every ``world_size``-th example) when torch.distributed runs."""
    dist = _dist()
    if dist is None:
        return data
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = torch.arange(rank, len(data), world)
    if len(rows) == 0:
        raise EmptyDataError(f"process {rank} of {world} got no examples: use fewer processes")
    return data.select(rows)


def reduce_state(state: State) -> State:
    """Sum every state tensor across processes (no-op in a single process)."""
    dist = _dist()
    if dist is None:
        return state
    on_gpu = dist.get_backend() == "nccl"  # nccl reduces CUDA tensors only
    for key in sorted(state):
        t = state[key]
        if on_gpu:
            moved = t.to(f"cuda:{torch.cuda.current_device()}")
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            t.copy_(moved.cpu())
        else:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return state


@dataclass(frozen=True, eq=False)
class ProbeRun:
    """How a probe runs, in one object: the sites, the soft prompt and the forward pass that
    places it (a head's ``class_logits``), the objective whose gradients a gradient probe
    receives, batching and the progress bar. The probe itself says which positions it reads
    and whether it needs gradients."""

    sites: SiteSpec | Sequence[SiteSpec] | None = None
    prompt: Tensor | None = None
    forward: Callable | None = None
    objective: Callable | None = None
    batch_size: int = 32
    progress: bool | None = None
    compute_dtype: object = None  # None: the model's dtype; else model.computing_in(it)

    @classmethod
    def of(cls, run: ProbeRun | None = None, **fields_) -> ProbeRun:
        """``run`` (default: the defaults) with ``fields_`` replaced."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields_) - known)
        if unknown:
            raise NeuronLensError(f"unknown probe option(s) {unknown}; known: {sorted(known)}")
        return dataclasses.replace(run or cls(), **fields_)


def collect_state(
    model: NeuronModel,
    probe: Probe,
    data,
    *,
    run: ProbeRun | None = None,
    labels=None,
    distributed: bool = True,
    **options,
) -> tuple[State, list[Site], int]:
    """Run ``probe`` over ``data`` and return its (process-reduced) state.

    ``run`` (a :class:`ProbeRun`) and ``options`` (any of its fields, which override it) say
    how. The data is sharded over processes when torch.distributed is initialised (and
    ``distributed``); the states are then summed across processes, so every process holds
    the state of the whole data.
    """
    run = ProbeRun.of(run, **options)
    cdata = data if isinstance(data, CaptureData) else as_capture_data(model, data, labels)
    if len(cdata) == 0:
        raise EmptyDataError("the probe got no examples")
    n_total = len(cdata)
    if distributed:
        cdata = shard(cdata)
    chosen = model.select_sites(run.sites)
    grouped = [s.name for s in chosen if s.group > 1]
    if grouped and not getattr(probe, "grouped", False):
        raise SiteError(
            f"{type(probe).__name__} scores single values, but sites {grouped} hold whole "
            "attention heads: score heads with attribute(..., modules='heads'), or probe the "
            "attention output's features one by one with modules='attn_out'"
        )
    state = probe.init_state(chosen)
    with model.computing_in(run.compute_dtype):
        _capture_into(model, probe, state, cdata, chosen, run)
    if distributed:
        state = reduce_state(state)
    return state, chosen, n_total


def _capture_into(model, probe, state, cdata, chosen, run) -> None:
    capture(
        model,
        cdata,
        lambda sb: probe.update(state, sb),
        sites=chosen,
        positions=probe.positions,
        prompt=run.prompt,
        grads=probe.needs_grads,
        objective=run.objective,
        forward=run.forward,
        batch_size=run.batch_size,
        progress=run.progress,
    )


def compute_dtype_name(model: NeuronModel, compute_dtype) -> str:
    """The name of the dtype a call with ``compute_dtype`` computes in on ``model``."""
    target = resolve_dtype(compute_dtype)
    return dtype_name(model.dtype if target is None else target)


def run_probe(
    model: NeuronModel,
    probe: Probe,
    data,
    *,
    run: ProbeRun | None = None,
    labels=None,
    task: str | None = None,
    meta: dict | None = None,
    **options,
) -> NeuronScores:
    """Run a probe and finish it into :class:`NeuronScores` (in every process); ``run`` and
    ``options`` as in :func:`collect_state`.

    Examples:
        >>> rates = run_probe(model, FiringRate(), texts, batch_size=16)  # doctest: +SKIP
    """
    distributed = options.pop("distributed", True)
    run = ProbeRun.of(run, **options)
    state, chosen, n = collect_state(model, probe, data, run=run, labels=labels,
                                     distributed=distributed)  # fmt: skip
    info = ProbeInfo(
        model, n, {"compute_dtype": compute_dtype_name(model, run.compute_dtype), **(meta or {})}
    )
    scores = probe.finish(state, chosen, info)
    return NeuronScores(
        {k: v.float() for k, v in scores.items()},
        chosen,
        probe.name,
        model.name,
        task or getattr(data, "task", None),
        {"n_examples": n, "model_dtype": dtype_name(model.dtype), **info.meta},
    )
