"""Module surgery on plain Hugging Face models: unwrapped copies, FFN linears sliced or resized.

What :mod:`neuronlens.pruning.prune` (slicing) and :mod:`neuronlens.pruning.storage`
(resizing before loading saved weights) do to a model's modules. GPT-2's ``Conv1D`` stores
its weight ``[in, out]``; everything else here is ``nn.Linear`` (``[out, in]``).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Mapping

import torch
import transformers
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from neuronlens.errors import ShapeMismatchError, UnsupportedModelError
from neuronlens.models.attention_heads import GatherLinear, keep_t5_heads, t5_kept_heads
from neuronlens.models.families import Attention, Stack
from neuronlens.models.loading import quiet_transformers
from neuronlens.models.model import NeuronModel, walk_modules

INTERMEDIATE_ATTRS = ("intermediate_size", "d_ff", "n_inner")
"""HF config attributes holding the FFN width (BERT/RoBERTa/Llama, T5, GPT-2)."""


def plain_hf_model(model: NeuronModel) -> transformers.PreTrainedModel:
    """An unwrapped Hugging Face copy of the model (same class, cloned weights, eval mode).

    The booted model's submodules are bridge wrappers; this builds a fresh model of the same
    class from the config, gives its FFNs the model's current widths, and copies every
    parameter and buffer (cloned, so the copy shares no storage with ``model``).
    """
    src = model.hf_model
    config = copy.deepcopy(src.config)
    with no_init(), quiet_transformers():
        fresh = type(src)(config)
    share_like(fresh, src)
    stacks = {st.bridge_name: st for st in model.stacks}
    for site in model.sites:
        resize_site(fresh, stacks[site.stack], site.layer, site.width)
    for stack in model.stacks:
        if not isinstance(stack.attention, Attention):
            continue
        for layer in range(len(getattr(model.bridge, stack.bridge_name))):
            counts = head_counts(src, stack, layer, model.head_dim)
            if counts != head_counts(fresh, stack, layer, model.head_dim):
                resize_heads(fresh, stack, layer, *counts, model.head_dim)
            gathered = gathered_inputs(src, stack, layer)
            if gathered is not None:
                resize_inputs(fresh, stack, layer, gathered)
    with torch.no_grad():
        for name, tensor in named_tensors(fresh):
            owner_path, _, attr = name.rpartition(".")
            owner = walk_modules(fresh, owner_path) if owner_path else fresh
            source = getattr(walk_modules(src, owner_path) if owner_path else src, attr)
            if source.shape != tensor.shape:
                raise ShapeMismatchError(
                    f"{model.name}: {name} has shape {list(source.shape)} in the model but "
                    f"{list(tensor.shape)} in its rebuilt copy"
                )
            if isinstance(tensor, nn.Parameter):
                tensor.data = source.detach().clone()  # keeps tied parameters tied
            else:
                owner._buffers[attr] = source.detach().clone()
    fresh.eval()
    fresh.requires_grad_(False)
    return fresh


def share_like(fresh: nn.Module, src: nn.Module) -> None:
    """Make ``fresh`` share a parameter between the names where ``src`` shares one.

    Tied weights (an LM head that is the input embedding, T5's one embedding for encoder,
    decoder and head) are tied by transformers after init, which :func:`no_init` skips: a
    model built under it holds untied copies, which a pruned model would carry and a saved
    one would store twice.
    """
    first: dict[int, nn.Parameter] = {}  # source parameter -> fresh parameter
    for name, param in list(fresh.named_parameters(remove_duplicate=False)):
        owner_path, _, attr = name.rpartition(".")
        source = getattr(walk_modules(src, owner_path) if owner_path else src, attr)
        if id(source) in first:
            owner = walk_modules(fresh, owner_path) if owner_path else fresh
            setattr(owner, attr, first[id(source)])
        else:
            first[id(source)] = param


def named_tensors(module: nn.Module):
    yield from module.named_parameters(remove_duplicate=False)
    yield from module.named_buffers(remove_duplicate=False)


@contextlib.contextmanager
def no_init():
    """Skip random weight init while building a model whose weights are overwritten anyway."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            no_init_weights = contextlib.nullcontext
    with no_init_weights():
        yield


def get_module(root: nn.Module, dotted: str) -> nn.Module:
    return walk_modules(root, dotted)


def set_module(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_path, _, attr = dotted.rpartition(".")
    parent = walk_modules(root, parent_path) if parent_path else root
    setattr(parent, attr, module)


def is_conv1d(module: nn.Module) -> bool:
    return isinstance(module, Conv1D)


class NoInputConv1D(Conv1D):
    """GPT-2's Conv1D for a second linear whose every input neuron was pruned: HF's
    ``x.view(-1, 0)`` fails on empty inputs, so this returns the bias at every position."""

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != 0:
            return super().forward(x)
        return self.bias.to(x.dtype).expand(*x.shape[:-1], self.nf).clone()


def check_linear(module: nn.Module, where: str) -> None:
    if not (isinstance(module, nn.Linear) or is_conv1d(module)):
        raise UnsupportedModelError(
            f"cannot prune {where}: it is a {type(module).__name__}, not nn.Linear or Conv1D"
        )


def linear_like(
    like: nn.Module, in_features: int, out_features: int, weight: Tensor | None, bias
) -> nn.Module:
    """A new module of ``like``'s kind (nn.Linear or GPT-2 Conv1D) with the given weights.

    ``weight`` is given in the module's own layout (``[out, in]`` Linear, ``[in, out]`` Conv1D);
    None leaves it uninitialised (``bias``: a tensor, None for none, or True for uninitialised).
    """
    w0 = like.weight
    has_bias = bias is not None
    if is_conv1d(like):
        cls = NoInputConv1D if in_features == 0 else Conv1D
        with warnings.catch_warnings(), torch.device("meta"):  # zero-size init warns "no-op"
            warnings.simplefilter("ignore")
            new = cls(out_features, in_features)
        new.weight = nn.Parameter(
            torch.empty(in_features, out_features, dtype=w0.dtype, device=w0.device)
            if weight is None
            else weight,
            requires_grad=False,
        )
        if not has_bias:
            new.bias = None
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            new = nn.Linear(in_features, out_features, bias=has_bias, device="meta")
        new.weight = nn.Parameter(
            torch.empty(out_features, in_features, dtype=w0.dtype, device=w0.device)
            if weight is None
            else weight,
            requires_grad=False,
        )
    if has_bias:
        new.bias = nn.Parameter(
            torch.empty(out_features, dtype=w0.dtype, device=w0.device) if bias is True else bias,
            requires_grad=False,
        )
    new.train(like.training)
    return new


def linear_dims(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear, Conv1D or :class:`GatherLinear`."""
    if isinstance(module, GatherLinear):
        return module.in_features, module.out_features
    if is_conv1d(module):
        return int(module.weight.shape[0]), int(module.weight.shape[1])
    return int(module.weight.shape[1]), int(module.weight.shape[0])


def slice_site(hf: nn.Module, stack: Stack, layer: int, idx: Tensor) -> None:
    """Keep neurons ``idx`` of one FFN of a plain HF model (in place)."""
    ffn = get_module(hf, stack.hf_ffn.format(i=layer))
    where = f"{stack.hf_ffn.format(i=layer)}"
    for name in stack.hf_in:
        _keep_outputs(ffn, name, idx, where)
    _keep_inputs(ffn, stack.hf_out, idx, where)


def resize_site(hf: nn.Module, stack: Stack, layer: int, width: int) -> None:
    """Give one FFN of a plain HF model ``width`` neurons (uninitialised weights)."""
    ffn = get_module(hf, stack.hf_ffn.format(i=layer))
    where = f"{stack.hf_ffn.format(i=layer)}"
    for name in stack.hf_in:
        lin = get_module(ffn, name)
        check_linear(lin, f"{where}.{name}")
        d_in, d_out = linear_dims(lin)
        if d_out != width:
            set_module(
                ffn, name, linear_like(lin, d_in, width, None, None if lin.bias is None else True)
            )
    out = get_module(ffn, stack.hf_out)
    check_linear(out, f"{where}.{stack.hf_out}")
    d_in, d_out = linear_dims(out)
    if d_in != width:
        set_module(
            ffn,
            stack.hf_out,
            linear_like(out, width, d_out, None, None if out.bias is None else True),
        )


def set_config_width(config, widths: Mapping[str, int]) -> None:
    """Informational: the config's FFN width becomes the widest pruned FFN."""
    if not widths:
        return
    for attr in INTERMEDIATE_ATTRS:
        if attr in config.to_dict():
            setattr(config, attr, max(widths.values()))
            return


# ---------------------------------------------------------------------- attention heads
def attention_table(stack: Stack, what: str) -> Attention:
    """The stack's attention entry, or an error saying why its heads cannot be removed."""
    if isinstance(stack.attention, Attention):
        return stack.attention
    raise UnsupportedModelError(
        f"cannot {what} attention heads of {stack.bridge_name}: {stack.attention} "
        "(heads can still be scored and switched off with Zero / Retain)"
    )


def head_counts(hf: nn.Module, stack: Stack, layer: int, head_dim: int) -> tuple[int, int]:
    """``(query heads, key/value heads)`` of one attention module of a plain HF model."""
    att = attention_table(stack, "read")
    mod = get_module(hf, att.path.format(i=layer))
    if att.fused:
        n = linear_dims(get_module(mod, att.q))[1] // (3 * head_dim)
        return n, n
    n_q = linear_dims(get_module(mod, att.q))[1] // head_dim
    n_kv = linear_dims(get_module(mod, att.k))[1] // head_dim
    return n_q, n_kv


def kv_groups(heads: Tensor, n_q: int, n_kv: int, where: str) -> tuple[Tensor, int]:
    """For kept query ``heads`` (sorted), the key/value heads they read and how many query
    heads share each: grouped-query attention keeps the same number in every kept group."""
    if n_q == n_kv:
        return heads, 1
    rep = n_q // n_kv
    groups, counts = torch.unique(heads // rep, return_counts=True)
    if counts.numel() and not bool((counts == counts[0]).all()):
        raise UnsupportedModelError(
            f"{where}: grouped-query attention ({rep} query heads per key/value head) needs the "
            f"same number of kept heads in every kept group; got {counts.tolist()} in groups "
            f"{groups.tolist()}"
        )
    return groups, int(counts[0]) if counts.numel() else rep


def _dims(heads: Tensor, head_dim: int) -> Tensor:
    return (heads.unsqueeze(1) * head_dim + torch.arange(head_dim)).flatten()


def _keep_outputs(mod: nn.Module, name: str, idx: Tensor, where: str) -> None:
    """Keep output features ``idx`` of linear ``name`` of ``mod`` (weight rows and bias)."""
    lin = get_module(mod, name)
    check_linear(lin, f"{where}.{name}")
    idx = idx.to(lin.weight.device)
    w = lin.weight.detach()
    w = w[:, idx].clone() if is_conv1d(lin) else w[idx].clone()
    b = None if lin.bias is None else lin.bias.detach()[idx].clone()
    set_module(mod, name, linear_like(lin, linear_dims(lin)[0], int(idx.numel()), w, b))


def _keep_inputs(mod: nn.Module, name: str, idx: Tensor, where: str) -> None:
    """Keep input features ``idx`` of linear ``name`` of ``mod`` (weight columns; the bias
    stays whole)."""
    lin = get_module(mod, name)
    check_linear(lin, f"{where}.{name}")
    idx = idx.to(lin.weight.device)
    w = lin.weight.detach()
    w = w[idx].clone() if is_conv1d(lin) else w[:, idx].clone()
    b = None if lin.bias is None else lin.bias.detach().clone()
    set_module(mod, name, linear_like(lin, int(idx.numel()), linear_dims(lin)[1], w, b))


def slice_heads(hf: nn.Module, stack: Stack, layer: int, heads: Tensor, head_dim: int) -> None:
    """Keep query heads ``heads`` (indices into the current heads) of one attention module
    of a plain HF model, in place: rows of q (and of k, v for their key/value heads; the
    three blocks of a fused QKV linear), columns of the output projection."""
    att = attention_table(stack, "prune")
    where = att.path.format(i=layer)
    mod = get_module(hf, where)
    n_q, n_kv = head_counts(hf, stack, layer, head_dim)
    heads = torch.unique(heads.long().cpu())
    groups, per_group = kv_groups(heads, n_q, n_kv, where)
    if att.fused:
        dims, width = _dims(heads, head_dim), n_q * head_dim
        _keep_outputs(mod, att.q, torch.cat([dims, dims + width, dims + 2 * width]), where)
    else:
        for name, keep in ((att.q, heads), (att.k, groups), (att.v, groups)):
            _keep_outputs(mod, name, _dims(keep, head_dim), where)
    _keep_inputs(mod, att.o, _dims(heads, head_dim), where)
    if att.shared_bias:  # the bias columns are the original heads': compose the indices
        keep_t5_heads(mod, t5_kept_heads(mod, n_q)[heads])
    _set_counts(mod, att, int(heads.numel()), head_dim, per_group if n_q != n_kv else None)


def resize_heads(
    hf: nn.Module, stack: Stack, layer: int, n_q: int, n_kv: int, head_dim: int
) -> None:
    """Give one attention module ``n_q`` query and ``n_kv`` key/value heads (uninitialised
    weights; T5: placeholder head indices), as a saved head-pruned model has them."""
    att = attention_table(stack, "resize")
    where = att.path.format(i=layer)
    mod = get_module(hf, where)
    grouped = head_counts(hf, stack, layer, head_dim)
    sizes = ((att.q, 3 * n_q),) if att.fused else ((att.q, n_q), (att.k, n_kv), (att.v, n_kv))
    for name, n in sizes:
        lin = get_module(mod, name)
        d_in, _ = linear_dims(lin)
        bias = None if lin.bias is None else True
        set_module(mod, name, linear_like(lin, d_in, n * head_dim, None, bias))
    out = get_module(mod, att.o)
    bias = None if out.bias is None else True
    set_module(mod, att.o, linear_like(out, n_q * head_dim, linear_dims(out)[1], None, bias))
    if att.shared_bias:  # the saved (or copied) kept_heads buffer overwrites these
        keep_t5_heads(mod, torch.arange(n_q))
    per_group = n_q // n_kv if n_kv and grouped[0] != grouped[1] else None
    _set_counts(mod, att, n_q, head_dim, per_group)


def _set_counts(mod: nn.Module, att: Attention, n_heads: int, head_dim: int, per_group) -> None:
    """Attributes of the HF module that follow its head count."""
    if att.counts is not None:
        counted = get_module(mod, att.counts) if att.counts else mod
        heads_attr, width_attr = att.count_attrs
        setattr(counted, heads_attr, n_heads)
        setattr(counted, width_attr, n_heads * head_dim)
    if per_group is not None:
        mod.num_key_value_groups = per_group


# ---------------------------------------------------------------------- attention output inputs
def attention_output(hf: nn.Module, stack: Stack, layer: int) -> tuple[nn.Module, str, str]:
    """``(attention module, name of its output projection, dotted path)`` of one layer."""
    att = attention_table(stack, "prune the attention output of")
    where = att.path.format(i=layer)
    return get_module(hf, where), att.o, f"{where}.{att.o}"


def gather_inputs(hf: nn.Module, stack: Stack, layer: int, kept: Tensor) -> None:
    """Keep input features ``kept`` (indices into the full width) of one attention output
    projection of a plain HF model, in place."""
    mod, name, where = attention_output(hf, stack, layer)
    out = get_module(mod, name)
    kept = torch.unique(kept.long().cpu())
    if isinstance(out, GatherLinear):
        weight, bias, full, current = out.weight, out.bias, out.in_features, out.kept.cpu()
        pos = {int(i): p for p, i in enumerate(current.tolist())}
        if any(int(i) not in pos for i in kept):
            raise ShapeMismatchError(f"{where}: keeps features that were removed before")
        cols = torch.tensor([pos[int(i)] for i in kept], dtype=torch.long)
    else:
        check_linear(out, where)
        full = linear_dims(out)[0]
        weight = out.weight.t() if is_conv1d(out) else out.weight
        bias, cols = out.bias, kept
    w = weight.detach()[:, cols.to(weight.device)].clone()
    b = None if bias is None else bias.detach().clone()
    set_module(mod, name, GatherLinear(full, kept.to(w.device), w, b))


def resize_inputs(hf: nn.Module, stack: Stack, layer: int, n_kept: int) -> None:
    """Give one attention output projection ``n_kept`` input features (uninitialised
    weights, placeholder indices), as a saved model has them."""
    mod, name, where = attention_output(hf, stack, layer)
    out = get_module(mod, name)
    check_linear(out, where)
    full, d_out = linear_dims(out)
    w = torch.empty(d_out, n_kept, dtype=out.weight.dtype, device=out.weight.device)
    b = None if out.bias is None else torch.empty_like(out.bias)
    set_module(mod, name, GatherLinear(full, torch.arange(n_kept), w, b))


def gathered_inputs(hf: nn.Module, stack: Stack, layer: int) -> int | None:
    """How many input features one attention output projection reads (None: all)."""
    if isinstance(stack.attention, str):
        return None
    out = get_module(*attention_output(hf, stack, layer)[:2])
    return int(out.kept.numel()) if isinstance(out, GatherLinear) else None
