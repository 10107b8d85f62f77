"""Neuron sites: one per FFN (and, on request, per attention block), with stack, layer,
bridge hook name and width.

``module`` says what a site's units are:

* ``"ffn"``: the FFN's neurons (the input of its second linear);
* ``"heads"``: the attention block's heads, whole (the input of the attention output
  projection, ``head_dim`` values per head: ``group``);
* ``"attn_out"``: the attention output projection's input features, one by one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from neuronlens.errors import SiteError


@dataclass(frozen=True, order=True)
class Site:
    """One FFN's neurons.

    Attributes:
        stack: the bridge stack holding the block (``blocks``, ``encoder_blocks``,
            ``decoder_blocks``).
        layer: block index within the stack.
        hook_name: bridge hook whose output is the neuron activation
            (``{stack}.{layer}.mlp.hook_post``: the input of the FFN's second linear).
        width: number of units (neurons, or heads), read from module shapes.
        module: ``"ffn"``, ``"heads"`` or ``"attn_out"`` (see the module docstring).
        group: values of the hooked tensor per unit (a head's ``head_dim``; 1 elsewhere).
    """

    stack: str
    layer: int
    hook_name: str
    width: int
    module: str = "ffn"
    group: int = 1

    @property
    def name(self) -> str:
        """Short id: ``"{stack}.{layer}"`` for an FFN, ``"{stack}.{layer}.heads"`` /
        ``"{stack}.{layer}.attn_out"`` for an attention block."""
        base = f"{self.stack}.{self.layer}"
        return base if self.module == "ffn" else f"{base}.{self.module}"

    @property
    def hooked_width(self) -> int:
        """Last dimension of the hooked tensor: ``width * group``."""
        return self.width * self.group

    def __str__(self) -> str:
        unit = {"heads": "heads", "attn_out": "features"}.get(self.module, "neurons")
        return f"{self.name} ({self.width} {unit})"


MODULES = ("ffn", "heads", "attn_out")
"""Module kinds a site can hold; ``modules="all"`` means the FFN and the attention output
projection's inputs (every linear's inner dimension, without counting a head twice)."""

ALL_MODULES = ("ffn", "attn_out")


def module_kinds(modules: str | Sequence[str]) -> tuple[str, ...]:
    """Check ``modules=`` (a kind, ``"all"``, or a list of kinds) and return the kinds."""
    if isinstance(modules, str):
        kinds = ALL_MODULES if modules == "all" else (modules,)
    else:
        kinds = tuple(modules)
    bad = [k for k in kinds if k not in MODULES]
    if bad or not kinds:
        raise SiteError(
            f"unknown module kind(s) {bad or kinds!r}: use one of {MODULES}, 'all', or a list"
        )
    if "heads" in kinds and "attn_out" in kinds:
        raise SiteError("'heads' and 'attn_out' hook the same tensor: choose one of them")
    return tuple(dict.fromkeys(kinds))


SiteSpec = Site | str | int | tuple[str, int]
"""What users may pass to pick a site: a Site, ``"blocks.3"``, a layer index (one-stack
models), or ``("encoder_blocks", 3)``."""


def resolve_sites(
    all_sites: Sequence[Site], spec: SiteSpec | Iterable[SiteSpec] | None
) -> list[Site]:
    """Turn a user's site selection into Site objects of this model.

    ``None`` means every site. Raises SiteError for anything the model does not have.
    """
    if spec is None:
        return list(all_sites)
    if isinstance(spec, (Site, str, int)) or (
        isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str)
    ):
        spec = [spec]  # type: ignore[list-item]
    out: list[Site] = []
    for item in spec:  # type: ignore[union-attr]
        site = resolve_site(all_sites, item)
        if site not in out:
            out.append(site)
    if not out:
        raise SiteError("no sites selected: pass None for every site, or a non-empty list")
    return out


def resolve_site(all_sites: Sequence[Site], item: SiteSpec) -> Site:
    """One site of this model from a Site, a name, a layer index or ``(stack, layer)``."""
    stacks = sorted({s.stack for s in all_sites})
    by_name = {s.name: s for s in all_sites}
    valid = _describe(all_sites)
    if isinstance(item, Site):
        found = by_name.get(item.name)
        if found is None:
            raise SiteError(f"site {item.name!r} is not in this model; valid sites: {valid}")
        return found
    if isinstance(item, bool):
        raise SiteError(f"cannot use {item!r} as a site; valid sites: {valid}")
    if isinstance(item, int):
        if len(stacks) != 1:
            raise SiteError(
                f"layer index {item} is ambiguous: this model has stacks {stacks}; "
                f"name the stack, e.g. ('{stacks[0]}', {item}) or '{stacks[0]}.{item}'"
            )
        name = f"{stacks[0]}.{item}"
    elif isinstance(item, tuple):
        name = f"{item[0]}.{item[1]}"
    elif isinstance(item, str):
        name = item
    else:
        raise SiteError(f"cannot use {item!r} as a site; valid sites: {valid}")
    if name not in by_name:
        raise SiteError(f"site {name!r} is not in this model; valid sites: {valid}")
    return by_name[name]


def _describe(all_sites: Sequence[Site]) -> str:
    parts = []
    for stack in dict.fromkeys(s.stack for s in all_sites):
        layers = [s.layer for s in all_sites if s.stack == stack]
        parts.append(f"{stack}.{min(layers)}..{stack}.{max(layers)}")
    return ", ".join(parts)
