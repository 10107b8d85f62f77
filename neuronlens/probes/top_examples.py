"""The examples that activate a neuron most, token by token: a streaming, mergeable probe.

:func:`top_examples` runs :class:`TopExamplesProbe` over any amount of data. Per neuron its
state holds, in bounded memory (nothing grows with the number of examples):

* the ``k`` examples whose activation (the maximum over the ranked positions, by default the
  input tokens) is highest, optionally the ``k`` lowest, with every token's activation;
* a uniform sample of ``sample`` examples (a bottom-k sketch: each example gets a seeded
  pseudo-random priority from its index, and the ``sample`` smallest priorities are kept),
  from which the activation quantiles, the per-quantile samples and the histogram are read;
* the sums of the activation's first four powers over the ranked tokens (its moments).

Two shards' states merge into the state of their union exactly (ties are broken by the
example's index, the sample by the priority), so :func:`top_examples` runs one shard per
process under ``torchrun`` and gathers the states.

The result, :class:`TopExamples`, holds one :class:`NeuronRecord` per neuron; it saves and
loads (a JSON file with its own checksum) and exports to the neuron-record JSON of OpenAI's
neuron-explainer (``<dir>/<layer>/<neuron>.json``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

import neuronlens.checks as checks
from neuronlens.capture import AllTokens, CaptureData, Positions, SiteBatch, as_capture_data
from neuronlens.errors import EmptyDataError, NeuronLensError, SiteError
from neuronlens.io import json_text, write_text_atomic
from neuronlens.models.model import NeuronModel
from neuronlens.models.placement import dtype_name, widen
from neuronlens.models.sites import Site
from neuronlens.neurons import NeuronSet
from neuronlens.positions import PositionContext
from neuronlens.probes.base import Probe, ProbeRun, State, collect_state
from neuronlens.prompts import PromptResult
from neuronlens.prompts.heads import render_texts
from neuronlens.tasks import get_task, list_tasks

FORMAT = "neuronlens.top_examples"
FORMAT_VERSION = 1
PAD, PROMPT = -1, -2
"""Token codes of padding and soft-prompt positions in the state (else the token id)."""
_MASK64 = (1 << 64) - 1


def priorities(index: Tensor, seed: int) -> Tensor:
    """A pseudo-random number in [0, 1) per example index (splitmix64 of ``seed`` and the
    index): the same for an example whatever shard or batch it is in."""
    x = index.cpu().numpy().astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) & _MASK64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return torch.from_numpy((x >> np.uint64(11)).astype(np.float64) / float(1 << 53))


def _pad_to(t: Tensor, length: int, value) -> Tensor:
    """``t`` padded with ``value`` along its last dimension to ``length``."""
    if t.shape[-1] >= length:
        return t
    pad = t.new_full((*t.shape[:-1], length - t.shape[-1]), value)
    return torch.cat([t, pad], -1)


def _order(key: Tensor, index: Tensor, descending: bool) -> Tensor:
    """Per row, the order by ``key`` (descending or ascending), ties by ``index``
    ascending, empty slots (``index < 0``) last."""
    big = torch.iinfo(torch.long).max
    tie = torch.where(index < 0, torch.full_like(index, big), index)
    by_index = torch.sort(tie, dim=-1, stable=True).indices
    k = key.gather(-1, by_index)
    k = torch.where(index.gather(-1, by_index) < 0, torch.full_like(k, -math.inf if descending
                    else math.inf), k)  # fmt: skip
    by_key = torch.sort(k, dim=-1, descending=descending, stable=True).indices
    return by_index.gather(-1, by_key)


class TopExamplesProbe(Probe):
    """The streaming state behind :func:`top_examples` (see the module docstring).

    ``neurons``: per site name, the neuron indices kept. ``rank_positions``: the positions
    whose maximum ranks an example (the activations of every position are kept for display).
    ``rows``: the global index of each example of the data the probe sees (a shard's rows).
    """

    name = "top_examples"
    positions = AllTokens(include_prompt=True)

    def __init__(self, neurons: dict[str, Tensor], *, k: int = 20, lowest: bool = False,
                 sample: int = 200, seed: int = 0, rank_positions: Positions | None = None,
                 rows: Tensor | None = None, mask_token_id: int | None = None) -> None:  # fmt: skip
        self.neurons = {s: torch.as_tensor(v).long() for s, v in neurons.items()}
        self.k, self.lowest, self.sample, self.seed = k, lowest, sample, seed
        self.rank_positions = rank_positions or AllTokens(include_prompt=False)
        self.rows = rows
        self.mask_token_id = mask_token_id

    # -------------------------------------------------------------- state
    def _kinds(self) -> tuple[str, ...]:
        return ("top", "low") if self.lowest else ("top",)

    def init_state(self, sites: Sequence[Site]) -> State:
        st: State = {}
        for s in sites:
            n = len(self.neurons[s.name])
            for kind in self._kinds():
                fill = -math.inf if kind == "top" else math.inf
                st[f"{s.name}/{kind}_val"] = torch.full((n, self.k), fill, dtype=torch.float64)
                st[f"{s.name}/{kind}_idx"] = torch.full((n, self.k), -1, dtype=torch.long)
                st[f"{s.name}/{kind}_act"] = torch.full((n, self.k, 0), math.nan)
                st[f"{s.name}/{kind}_code"] = torch.full((n, self.k, 0), PAD, dtype=torch.int32)
            st[f"{s.name}/res_pri"] = torch.full((self.sample,), math.inf, dtype=torch.float64)
            st[f"{s.name}/res_idx"] = torch.full((self.sample,), -1, dtype=torch.long)
            st[f"{s.name}/res_val"] = torch.full((n, self.sample), math.nan, dtype=torch.float64)
            st[f"{s.name}/res_act"] = torch.full((n, self.sample, 0), math.nan)
            st[f"{s.name}/res_code"] = torch.full((self.sample, 0), PAD, dtype=torch.int32)
            st[f"{s.name}/moments"] = torch.zeros(n, 5, dtype=torch.float64)
        return st

    def _batch_view(self, sb: SiteBatch):
        """``(values [N, B], acts [N, B, T], codes [B, T], index [B], moments [N, 5])``."""
        layout = sb.batch.layout
        if layout is None or sb.acts.shape[1] != layout.attention_mask.shape[1]:
            raise SiteError(
                f"top_examples reads every position of the sequence, but site {sb.site.name} "
                "sees positions that are not the input's (a decoder stack of an "
                "encoder-decoder, or a prefix prompt): pick encoder sites"
            )
        acts = widen(sb.acts[..., self.neurons[sb.site.name].to(sb.acts.device)]).float().cpu()
        attn = layout.attention_mask.bool().cpu()
        idx, valid = self.rank_positions.select(PositionContext(layout, self.mask_token_id))
        if idx is None:
            rank = valid.bool().cpu() & attn
        else:
            rank = torch.zeros_like(attn).scatter(1, idx.cpu(), valid.bool().cpu()) & attn
        if not bool(rank.any(1).all()):
            raise NeuronLensError(
                "some examples have no position to rank (the positions select none of their "
                "tokens): check positions= and the data"
            )
        masked = acts.masked_fill(~rank.unsqueeze(-1), -math.inf)
        values = masked.amax(1).double().T  # [N, B]
        shown = acts.masked_fill(~attn.unsqueeze(-1), math.nan).permute(2, 0, 1)  # [N, B, T]
        a = acts.double() * rank.unsqueeze(-1)
        cnt = rank.sum().double()
        moments = torch.stack(
            [cnt.expand(a.shape[-1]), *(a.pow(p).sum((0, 1)) for p in (1, 2, 3, 4))], -1
        )
        index = sb.batch.index if self.rows is None else self.rows[sb.batch.index]
        return values, shown, _codes(layout).cpu(), index.long().cpu(), moments

    def update(self, state: State, sb: SiteBatch) -> None:
        values, shown, codes, index, moments = self._batch_view(sb)
        n = values.shape[0]
        new = {
            "val": values,
            "idx": index.expand(n, -1),
            "act": shown,
            "code": codes.unsqueeze(0).expand(n, -1, -1),
        }
        name = sb.site.name
        for kind in self._kinds():
            self._keep(state, f"{name}/{kind}", new, kind == "top")
        res = {"pri": priorities(index, self.seed), "idx": index, "val": values, "act": shown,
               "code": codes}  # fmt: skip
        self._keep_sample(state, name, res)
        state[f"{name}/moments"] += moments

    # -------------------------------------------------------------- keeping
    def _keep(self, state: State, prefix: str, new: dict[str, Tensor], descending: bool):
        length = max(state[f"{prefix}_act"].shape[-1], new["act"].shape[-1])
        both = {}
        for f, fill in (("val", None), ("idx", None), ("act", math.nan), ("code", PAD)):
            old, add = state[f"{prefix}_{f}"], new[f]
            if fill is not None:
                old, add = _pad_to(old, length, fill), _pad_to(add, length, fill)
            both[f] = torch.cat([old, add.to(old.dtype)], 1)
        order = _order(both["val"], both["idx"], descending)[:, : self.k]
        for f in ("val", "idx"):
            state[f"{prefix}_{f}"] = both[f].gather(1, order)
        for f in ("act", "code"):
            g = order.unsqueeze(-1).expand(-1, -1, length)
            state[f"{prefix}_{f}"] = both[f].gather(1, g)

    def _keep_sample(self, state: State, name: str, new: dict[str, Tensor]) -> None:
        p = f"{name}/res"
        length = max(state[f"{p}_act"].shape[-1], new["act"].shape[-1])
        pri = torch.cat([state[f"{p}_pri"], new["pri"]])
        idx = torch.cat([state[f"{p}_idx"], new["idx"]])
        order = _order(pri.unsqueeze(0), idx.unsqueeze(0), False)[0][: self.sample]
        state[f"{p}_pri"], state[f"{p}_idx"] = pri[order], idx[order]
        val = torch.cat([state[f"{p}_val"], new["val"]], 1)
        state[f"{p}_val"] = val[:, order]
        act = torch.cat([_pad_to(state[f"{p}_act"], length, math.nan),
                         _pad_to(new["act"], length, math.nan)], 1)  # fmt: skip
        state[f"{p}_act"] = act[:, order]
        code = torch.cat([_pad_to(state[f"{p}_code"], length, PAD),
                          _pad_to(new["code"].to(torch.int32), length, PAD)], 0)  # fmt: skip
        state[f"{p}_code"] = code[order]

    def merge(self, a: State, b: State) -> State:
        """The state of the union of two shards (exact: the same as one pass)."""
        if a.keys() != b.keys():
            raise NeuronLensError("cannot merge top-example states with different keys")
        out = {k: v.clone() for k, v in a.items()}
        for name in sorted({k.split("/")[0] for k in a}):
            for kind in self._kinds():
                p = f"{name}/{kind}"
                new = {f: b[f"{p}_{f}"] for f in ("val", "idx", "act", "code")}
                self._keep(out, p, new, kind == "top")
            p = f"{name}/res"
            new = {f: b[f"{p}_{f}"] for f in ("pri", "idx", "val", "act", "code")}
            self._keep_sample(out, name, new)
            out[f"{name}/moments"] = a[f"{name}/moments"] + b[f"{name}/moments"]
        return out

    def reduce(self, state: State) -> State:
        """Gather every process's state and merge them (in rank order)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return state
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, state)
        out = gathered[0]
        for other in gathered[1:]:
            out = self.merge(out, other)
        return out

    def finish(self, state, sites, info):  # pragma: no cover - top_examples builds records
        raise NeuronLensError("TopExamplesProbe is read by top_examples(), not run_probe()")


def _codes(layout) -> Tensor:
    """``[B, T]``: the token id at each input position, PROMPT at soft-prompt positions,
    PAD at padding."""
    mask = layout.attention_mask.bool()
    codes = torch.full(mask.shape, PAD, dtype=torch.int32, device=mask.device)
    ids = layout.input_ids
    j = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
    codes.scatter_(1, layout.full_position(j), ids.to(torch.int32))
    if layout.n_prompt:
        codes[layout.prompt_mask()] = PROMPT
    codes[~mask] = PAD
    return codes


# ---------------------------------------------------------------------------- results


@dataclass
class Example:
    """One example as a neuron sees it: its tokens and the neuron's activation on each.

    ``value`` is the activation that ranked it (the maximum over the ranked positions);
    ``in_prompt[i]`` marks soft-prompt positions (token ``"<prompt j>"``)."""

    index: int
    value: float
    tokens: list[str]
    activations: list[float]
    in_prompt: list[bool]


@dataclass
class NeuronRecord:
    """What one neuron does on the data: its top (and lowest) examples, a sample of examples
    per activation quantile, and the distribution of its per-example activation."""

    site: str
    neuron: int
    layer: int
    top: list[Example]
    lowest: list[Example]
    by_quantile: list[list[Example]]
    quantile_boundaries: list[float]
    sample_values: list[float]
    """The ranking activation of every sampled example (a uniform sample of the data)."""
    random: list[Example]
    mean: float
    variance: float
    skewness: float
    kurtosis: float
    n_examples: int

    @property
    def max_activation(self) -> float:
        return self.top[0].value if self.top else math.nan

    def histogram(self, bins: int = 20) -> tuple[list[int], list[float]]:
        """``(counts, edges)`` of the sampled examples' ranking activations."""
        counts, edges = np.histogram(np.asarray(self.sample_values), bins=bins)
        return counts.tolist(), edges.tolist()


@dataclass
class TopExamples:
    """The records of :func:`top_examples`, one per neuron, in the order of the neurons."""

    records: list[NeuronRecord]
    model_name: str
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, i: int) -> NeuronRecord:
        return self.records[i]

    def record(self, site: str, neuron: int) -> NeuronRecord:
        for r in self.records:
            if r.site == site and r.neuron == neuron:
                return r
        have = sorted({r.site for r in self.records})
        raise NeuronLensError(f"no record of neuron {neuron} at site {site!r} (sites: {have})")

    def __repr__(self) -> str:
        return (
            f"TopExamples({len(self)} neurons of {self.model_name}, k={self.meta.get('k')}, "
            f"{self.meta.get('n_examples')} examples)"
        )

    # ---------------------------------------------------------- files
    def to_dict(self) -> dict:
        return {"model_name": self.model_name, "meta": self.meta,
                "records": [dataclasses.asdict(r) for r in self.records]}  # fmt: skip

    def save(self, path: str | os.PathLike) -> Path:
        """Write one JSON file (atomically), with the SHA-256 of its content inside."""
        body = json_text(self.to_dict(), sort_keys=True)
        doc = {"format": FORMAT, "format_version": FORMAT_VERSION,
               "sha256": hashlib.sha256(body.encode()).hexdigest(), "body": json.loads(body)}  # fmt: skip
        return write_text_atomic(path, json_text(doc, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> TopExamples:
        """Read a file written by :meth:`save`; a changed or truncated file is an error."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise NeuronLensError(f"{path}: not a readable top-examples file ({err})") from err
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise NeuronLensError(f"{path} was not written by TopExamples.save")
        if doc.get("format_version") != FORMAT_VERSION:
            raise NeuronLensError(f"{path}: format version {doc.get('format_version')}, this "
                                  f"neuronlens reads {FORMAT_VERSION}")  # fmt: skip
        body = json_text(doc["body"], sort_keys=True)
        if hashlib.sha256(body.encode()).hexdigest() != doc.get("sha256"):
            raise NeuronLensError(f"{path}: its content does not match its checksum (edited or "
                                  "damaged); compute the top examples again")  # fmt: skip
        b = doc["body"]
        return cls([_record_from(r) for r in b["records"]], b["model_name"], b["meta"])

    def to_neuron_explainer(self, directory: str | os.PathLike) -> list[Path]:
        """One neuron-record JSON per neuron, ``<directory>/<layer>/<neuron>.json``, in the
        layout of OpenAI's neuron-explainer (``NeuronRecord`` with ``neuron_id``,
        ``most_positive_activation_records``, ``random_sample``,
        ``random_sample_by_quantile``, ``quantile_boundaries`` and moments; each object
        carries its ``dataclass_name``). ``layer_index`` is the site's position in
        ``model.sites`` (the layer, for a model with one stack); soft-prompt positions are
        left out of the records (that format has tokens only)."""
        out = []
        for r in self.records:
            doc = explainer_record(r)
            path = Path(directory) / str(r.layer) / f"{r.neuron}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            out.append(write_text_atomic(path, json.dumps(doc)))
        return out


def _record_from(d: dict) -> NeuronRecord:
    ex = lambda e: Example(**e)  # noqa: E731
    d = dict(d)
    for key in ("top", "lowest", "random"):
        d[key] = [ex(e) for e in d[key]]
    d["by_quantile"] = [[ex(e) for e in q] for q in d["by_quantile"]]
    return NeuronRecord(**d)


def _activation_record(e: Example) -> dict:
    keep = [i for i, p in enumerate(e.in_prompt) if not p]
    return {"dataclass_name": "ActivationRecord", "tokens": [e.tokens[i] for i in keep],
            "activations": [e.activations[i] for i in keep]}  # fmt: skip


def explainer_record(r: NeuronRecord) -> dict:
    """``r`` as a neuron-explainer ``NeuronRecord`` dict."""
    return {
        "dataclass_name": "NeuronRecord",
        "neuron_id": {
            "dataclass_name": "NeuronId",
            "layer_index": r.layer,
            "neuron_index": r.neuron,
        },  # fmt: skip
        "random_sample": [_activation_record(e) for e in r.random],
        "random_sample_by_quantile": [[_activation_record(e) for e in q] for q in r.by_quantile],
        "quantile_boundaries": r.quantile_boundaries,
        "mean": r.mean,
        "variance": r.variance,
        "skewness": r.skewness,
        "kurtosis": r.kurtosis,
        "most_positive_activation_records": [_activation_record(e) for e in r.top],
    }


# ---------------------------------------------------------------------------- the call


def _neuron_map(model: NeuronModel, neurons) -> dict[str, Tensor]:
    """``{site name: neuron indices}`` from a NeuronSet, a dict or ``(site, neuron)`` pairs."""
    if isinstance(neurons, NeuronSet):
        pairs = {s: v for s, v in neurons.indices.items() if v.numel()}
    elif isinstance(neurons, dict):
        pairs = {str(s): torch.as_tensor(v).long().reshape(-1) for s, v in neurons.items()}
    else:
        pairs = {}
        for item in neurons:
            if not (isinstance(item, tuple) and len(item) == 2):
                raise NeuronLensError(
                    f"neurons must be a NeuronSet, a dict of site -> indices or (site, neuron) "
                    f"pairs; got {item!r}"
                )
            pairs.setdefault(str(item[0]), []).append(int(item[1]))
        pairs = {s: torch.tensor(v, dtype=torch.long) for s, v in pairs.items()}
    if not pairs or sum(int(v.numel()) for v in pairs.values()) == 0:
        raise NeuronLensError("top_examples got no neurons: pass e.g. skill.top(k=10)")
    out = {}
    for name, idx in pairs.items():
        site = model.select_sites([name])[0]
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= site.width):
            raise NeuronLensError(f"neuron index out of range for site {site.name} "
                                  f"(width {site.width})")  # fmt: skip
        out[site.name] = torch.unique(idx)
    return out


def _inputs(model, data, prompt, task, max_length):
    """``(CaptureData, prompt tensor or None, forward or None, prompt meta)``."""
    if isinstance(prompt, PromptResult):
        if not hasattr(data, "texts") or not hasattr(data, "task"):
            raise NeuronLensError("with a tuned prompt, data must be a task split (it is "
                                  "rendered with the task's template)")  # fmt: skip
        if task is None:
            if data.task not in list_tasks():
                raise NeuronLensError(f"task {data.task!r} is not registered: pass task=")
            task = get_task(data.task)
        prompt.head.check_model(model)
        texts = render_texts(model, prompt.head, task, data)
        head = prompt.head

        def fwd(enc, p, grads):
            return head.class_logits(model, enc, p, embeds_require_grad=grads)

        tensor = prompt.prompt if prompt.n_tokens else None
        meta = {"prompt_task": prompt.task, "prompt_seed": prompt.seed, "readout": head.readout}
        return CaptureData(texts=texts, max_length=max_length), tensor, fwd, meta
    cdata = as_capture_data(model, data, max_length=max_length)
    if prompt is not None and not isinstance(prompt, Tensor):
        raise NeuronLensError("prompt must be a PromptResult, a [p, d_model] tensor or None")
    return cdata, prompt, None, {}


def _shard_rows(n: int) -> Tensor:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return torch.arange(n)
    rows = torch.arange(dist.get_rank(), n, dist.get_world_size())
    if len(rows) == 0:
        raise EmptyDataError("a process got no examples: use fewer processes")
    return rows


def top_examples(
    model: NeuronModel,
    data,
    neurons,
    *,
    k: int = 20,
    lowest: bool = False,
    positions: Positions | None = None,
    prompt=None,
    task=None,
    quantiles: int = 5,
    per_quantile: int = 3,
    sample: int = 200,
    n_random: int = 10,
    seed: int = 0,
    batch_size: int = 32,
    max_length: int | None = 128,
    progress: bool | None = None,
    compute_dtype=None,
) -> TopExamples:
    """The ``k`` examples of ``data`` that activate each neuron most, token by token.

    Args:
        data: a task split, a list of texts, or anything :func:`~neuronlens.capture` takes.
        neurons: a :class:`~neuronlens.NeuronSet` (e.g. ``skill.top(k=10)``), a dict of site
            name to indices, or ``(site, neuron)`` pairs.
        lowest: also keep the ``k`` lowest-activating examples.
        positions: where an example's activation is read (its maximum over them ranks it);
            default the input tokens (``AllTokens(include_prompt=False)``). Every position's
            activation is kept for display, soft-prompt positions marked.
        prompt: a :class:`~neuronlens.prompts.PromptResult` (the data is rendered with its
            head's template and the prompt placed as the head places it; ``task=`` when the
            split's task is not registered), a raw ``[p, d_model]`` prompt, or None.
        quantiles, per_quantile: a uniform sample of ``sample`` examples is split at its
            activation quantiles into ``quantiles`` bins, and ``per_quantile`` examples of
            each are kept; ``n_random`` examples of the sample are kept as they come.
        seed: the sample's seed.

    Memory does not depend on the number of examples. Under ``torchrun`` every process
    reads its shard and the states are gathered and merged (the result is the same).

    Examples:
        >>> view = top_examples(model, dev, skill.top(k=3), prompt=tuned)  # doctest: +SKIP
        >>> view[0].top[0].tokens, view[0].top[0].activations              # doctest: +SKIP
    """
    for name, value, low in (("k", k, 1), ("sample", sample, 1), ("quantiles", quantiles, 1),
                             ("per_quantile", per_quantile, 0), ("n_random", n_random, 0),
                             ("batch_size", batch_size, 1)):  # fmt: skip
        checks.integer(name, value, minimum=low)
    if positions is not None:
        checks.instance("positions", positions, Positions, "a Positions object")
    model.require_weights()
    chosen = _neuron_map(model, neurons)
    cdata, tensor, fwd, pmeta = _inputs(model, data, prompt, task, max_length)
    if len(cdata) == 0:
        raise EmptyDataError("top_examples got no examples")
    rows = _shard_rows(len(cdata))
    probe = TopExamplesProbe(chosen, k=k, lowest=lowest, sample=sample, seed=seed,
                             rank_positions=positions, rows=rows,
                             mask_token_id=model.tokenizer.mask_token_id)  # fmt: skip
    run = ProbeRun(list(chosen), tensor, fwd, batch_size=batch_size, progress=progress,
                   compute_dtype=compute_dtype)  # fmt: skip
    state, sites, _ = collect_state(model, probe, cdata.select(rows), run=run, distributed=False)
    state = probe.reduce(state)
    meta = {
        "k": k, "lowest": lowest, "sample": sample, "seed": seed, "quantiles": quantiles,
        "per_quantile": per_quantile, "n_examples": len(cdata),
        "positions": repr(probe.rank_positions), "model_dtype": dtype_name(model.dtype),
        "task": getattr(data, "task", None), "split": getattr(data, "split", None), **pmeta,
    }  # fmt: skip
    spec = _Spec(quantiles, per_quantile, n_random, len(cdata))
    records = [
        _record(model, probe, state, site, j, spec) for site in sites
        for j in range(len(chosen[site.name]))
    ]  # fmt: skip
    return TopExamples(records, model.name, meta)


@dataclass(frozen=True)
class _Spec:
    quantiles: int
    per_quantile: int
    n_random: int
    n_examples: int


def _example(model, index: int, value: float, acts: Tensor, codes: Tensor) -> Example:
    keep = codes != PAD
    codes, acts = codes[keep].tolist(), acts[keep].tolist()
    tok = model.tokenizer
    tokens, in_prompt, j = [], [], 0
    for c in codes:
        if c == PROMPT:
            tokens.append(f"<prompt {j}>")
            in_prompt.append(True)
            j += 1
        else:
            tokens.append(tok.convert_tokens_to_string([tok.convert_ids_to_tokens(int(c))]))
            in_prompt.append(False)
    return Example(int(index), float(value), tokens, [float(a) for a in acts], in_prompt)


def _record(model, probe, state, site: Site, j: int, spec: _Spec) -> NeuronRecord:
    s = site.name
    neuron = int(probe.neurons[s][j])

    def examples(kind):
        idx = state[f"{s}/{kind}_idx"][j]
        return [
            _example(model, int(idx[i]), float(state[f"{s}/{kind}_val"][j, i]),
                     state[f"{s}/{kind}_act"][j, i], state[f"{s}/{kind}_code"][j, i])
            for i in range(len(idx)) if int(idx[i]) >= 0
        ]  # fmt: skip

    res_idx = state[f"{s}/res_idx"]
    live = [i for i in range(len(res_idx)) if int(res_idx[i]) >= 0]  # in priority order
    vals = state[f"{s}/res_val"][j]

    def sampled(i):
        return _example(model, int(res_idx[i]), float(vals[i]), state[f"{s}/res_act"][j, i],
                        state[f"{s}/res_code"][i])  # fmt: skip

    v = np.asarray([float(vals[i]) for i in live])
    bounds = np.quantile(v, [q / spec.quantiles for q in range(1, spec.quantiles)]).tolist()
    bins = np.searchsorted(np.asarray(bounds), v, side="right")
    by_q = [[sampled(live[i]) for i in np.flatnonzero(bins == q)[: spec.per_quantile]]
            for q in range(spec.quantiles)]  # fmt: skip
    mean, var, skew, kurt = _moments(state[f"{s}/moments"][j])
    return NeuronRecord(
        site=s, neuron=neuron, layer=model.sites.index(site) if site in model.sites else site.layer,
        top=examples("top"), lowest=examples("low") if probe.lowest else [],
        by_quantile=by_q, quantile_boundaries=bounds, sample_values=v.tolist(),
        random=[sampled(i) for i in live[: spec.n_random]],
        mean=mean, variance=var, skewness=skew, kurtosis=kurt, n_examples=spec.n_examples,
    )  # fmt: skip


def _moments(m: Tensor) -> tuple[float, float, float, float]:
    """Mean, variance, skewness and excess kurtosis from ``[count, sum x, x^2, x^3, x^4]``."""
    c, s1, s2, s3, s4 = (float(x) for x in m)
    if c == 0:
        return (math.nan,) * 4
    mu, e2, e3, e4 = s1 / c, s2 / c, s3 / c, s4 / c
    var = max(e2 - mu * mu, 0.0)
    m3 = e3 - 3 * mu * e2 + 2 * mu**3
    m4 = e4 - 4 * mu * e3 + 6 * mu * mu * e2 - 3 * mu**4
    if var <= 0:
        return mu, var, math.nan, math.nan
    return mu, var, m3 / var**1.5, m4 / var**2 - 3.0
