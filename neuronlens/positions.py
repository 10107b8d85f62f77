"""Token positions: which positions of each example a probe reads, and the one rule that
says where a tuned prompt's head decides.

Position selectors are objects (see :mod:`neuronlens.capture` for how capture uses them):

* :class:`AllTokens` - every non-padding token (soft-prompt positions included or not);
* :class:`PromptTokens` - the soft-prompt positions ``0 .. p-1``;
* :class:`PositionRange` - any fixed range of positions of the full sequence;
* :class:`MaskToken` - the mask token of each example;
* :class:`LastToken` - the last non-padding token of each example;
* :class:`AnswerToken` - where the prompt's head reads the answer (its ``readout``);
* :class:`PromptAndAnswer` - the soft-prompt positions, plus the answer position when the
  head reads it outside the prompt;
* :class:`Pooled` - the mean over the positions another selector picks (one per example).

**Where the model decides** (:func:`decision_positions`): skill neurons are read where the
head reads its answer, so the positions predictivity reads by default follow the tuned
prompt's readout. A pooled linear head (``readout="pool"``) averages the input tokens, so
predictivity reads :class:`Pooled` input tokens; where a causal LM's prompt precedes the
input (``readout="last"``) only the answer position sees the input (:class:`AnswerToken`);
otherwise the soft-prompt positions and the answer (:class:`PromptAndAnswer`, which with
``readout="prompt"`` are the prompt's own positions, as in the original skill-neuron code).
This is the only copy of the rule: ``predictivity``, the ablation studies and the study
command all call it. :func:`reads_where_head_decides` tells whether other positions are
among those the head reads; :func:`positions_spec` / :func:`positions_from_spec` write a
selector to JSON and back (saved results record where they were read).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields, is_dataclass

import torch
from torch import Tensor

from neuronlens.errors import EmptyDataError, NeuronLensError
from neuronlens.models.layout import Layout, mask_positions


@dataclass(frozen=True)
class PositionContext:
    """What a position selector may look at for one batch: its :class:`Layout`."""

    layout: Layout
    mask_token_id: int | None = None

    @property
    def input_ids(self) -> Tensor:
        """``[B, L]`` without the soft prompt."""
        return self.layout.input_ids

    @property
    def attention_mask(self) -> Tensor:
        """``[B, T]`` of the full sequence, soft prompt included."""
        return self.layout.attention_mask

    @property
    def n_prompt(self) -> int:
        return self.layout.n_prompt


class Positions:
    """Chooses token positions of each example. Subclasses implement :meth:`select`."""

    def select(self, ctx: PositionContext) -> tuple[Tensor | None, Tensor]:
        """``(index [B, n] or None, valid [B, n] bool)``; ``None`` index keeps every position."""
        raise NotImplementedError


@dataclass(frozen=True)
class AllTokens(Positions):
    """Every non-padding token; ``include_prompt=False`` drops the soft-prompt positions."""

    include_prompt: bool = True

    def select(self, ctx: PositionContext) -> tuple[Tensor | None, Tensor]:
        valid = ctx.attention_mask.bool()
        if not self.include_prompt and ctx.n_prompt:
            valid = valid & ~ctx.layout.prompt_mask()
        return None, valid


@dataclass(frozen=True)
class PositionRange(Positions):
    """Positions ``start .. stop-1`` of the full sequence (soft prompt included)."""

    start: int
    stop: int

    def select(self, ctx: PositionContext) -> tuple[Tensor | None, Tensor]:
        length = ctx.attention_mask.shape[1]
        if not 0 <= self.start < self.stop <= length:
            raise NeuronLensError(
                f"position range {self.start}..{self.stop} does not fit a batch of length {length}"
            )
        b = ctx.attention_mask.shape[0]
        idx = torch.arange(self.start, self.stop, device=ctx.attention_mask.device).expand(b, -1)
        return idx, ctx.attention_mask.gather(1, idx).bool()


@dataclass(frozen=True)
class PromptTokens(Positions):
    """The soft-prompt positions (needs a soft prompt), wherever the prompt sits."""

    def select(self, ctx: PositionContext) -> tuple[Tensor | None, Tensor]:
        if ctx.n_prompt == 0:
            raise NeuronLensError(
                "PromptTokens() needs a soft prompt: pass prompt= (a [p, d_model] tensor)"
            )
        idx = ctx.layout.prompt_index()
        return idx, torch.ones_like(idx, dtype=torch.bool)


@dataclass(frozen=True)
class MaskToken(Positions):
    """The position of the tokenizer's mask token (exactly one per example)."""

    def select(self, ctx: PositionContext) -> tuple[Tensor | None, Tensor]:
        found = mask_positions(ctx.input_ids, ctx.mask_token_id).unsqueeze(1)
        idx = ctx.layout.full_position(found)
        return idx, torch.ones_like(idx, dtype=torch.bool)


@dataclass(frozen=True)
class LastToken(Positions):
    """The last non-padding token of each example (right padding)."""

    def select(self, ctx: PositionContext) -> tuple[Tensor | None, Tensor]:
        idx = (ctx.attention_mask.sum(1, keepdim=True) - 1).long()
        return idx, torch.ones_like(idx, dtype=torch.bool)


_NO_ANSWER = (
    "this forward pass reads no single answer position: a pooled linear head "
    "(readout='pool') averages the input tokens (use Pooled(AllTokens(include_prompt=False))), "
    "T5 reads its answer in the decoder, and a forward that is not a head's class_logits "
    "has no answer at all"
)


@dataclass(frozen=True)
class AnswerToken(Positions):
    """The position where the head reads its answer (its ``readout``): the mask token, a
    soft-prompt position, or the last token. Needs a forward pass through a head."""

    def select(self, ctx: PositionContext) -> tuple[Tensor | None, Tensor]:
        if ctx.layout.answer is None:
            raise NeuronLensError(f"AnswerToken(): {_NO_ANSWER}")
        idx = ctx.layout.answer.unsqueeze(1)
        return idx, torch.ones_like(idx, dtype=torch.bool)


@dataclass(frozen=True)
class PromptAndAnswer(Positions):
    """The soft-prompt positions, and after them the answer position when the head reads
    its answer outside the prompt (the template's mask, the last input token). With
    ``readout="prompt"`` the answer is a prompt position, so these are the prompt's."""

    def select(self, ctx: PositionContext) -> tuple[Tensor | None, Tensor]:
        layout = ctx.layout
        parts = [layout.prompt_index()] if layout.n_prompt else []
        if layout.answer is not None:
            inside = layout.prompt_mask().gather(1, layout.answer.unsqueeze(1)).squeeze(1)
            if not bool(inside.all()):
                parts.append(layout.answer.unsqueeze(1))
        if not parts:
            raise NeuronLensError(
                "PromptAndAnswer(): the forward has no soft prompt and no answer position; "
                "pass a prompt, or choose positions such as LastToken()"
            )
        idx = torch.cat(parts, 1)
        return idx, torch.ones_like(idx, dtype=torch.bool)


@dataclass(frozen=True)
class Pooled(Positions):
    """The mean activation over the positions ``inner`` selects, one value per example: e.g.
    ``Pooled(AllTokens(include_prompt=False))``, what a pooled linear head reads."""

    inner: Positions = AllTokens(include_prompt=False)

    def select(self, ctx: PositionContext) -> tuple[Tensor | None, Tensor]:
        return self.inner.select(ctx)

    @staticmethod
    def pool(t: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """``([B, 1, width], [B, 1])``: the mean over each example's valid positions."""
        w = valid.to(t.dtype).unsqueeze(-1)
        n = w.sum(1, keepdim=True)
        if bool((n == 0).any()):
            raise EmptyDataError("Pooled(): an example has no token at the inner positions")
        return (t * w).sum(1, keepdim=True) / n, valid.any(1, keepdim=True)


def blind_positions(layout: Layout, idx: Tensor | None, valid: Tensor) -> Tensor:
    """``[B, n]`` bool: valid selected positions whose activations cannot depend on the input
    (in a causal LM, the positions before it: a soft prompt prepended to the input)."""
    return valid & ~layout.sees_input(idx)


# ---------------------------------------------------------------------------- the rule


class ReadoutWarning(UserWarning):
    """Predictivity read at positions the tuned prompt's head never reads, not asked for."""


#: readout -> the selectors that read where a head of that readout decides (the first one
#: is what predictivity reads by default). ``"last"`` exists only on causal LMs, whose prompt
#: then precedes the input: only the answer position sees the input.
_DECIDES: dict[str, tuple[Positions, ...]] = {
    "pool": (Pooled(),),
    "prompt": (PromptAndAnswer(), PromptTokens(), AnswerToken()),
    "mask": (PromptAndAnswer(), AnswerToken(), MaskToken()),
    "last": (AnswerToken(), LastToken()),
}


def _decides(readout) -> tuple[Positions, ...]:
    readout = getattr(readout, "readout", readout)  # a head, or its readout
    if readout not in _DECIDES:
        raise NeuronLensError(
            f"unknown readout {readout!r}: a tuned head reads 'prompt', 'mask', 'last' or 'pool'"
        )
    return _DECIDES[readout]


def decision_positions(readout) -> Positions:
    """The positions predictivity reads by default for a head (or a head's ``readout``):
    where the model decides (see the module docstring)."""
    return _decides(readout)[0]


def reads_where_head_decides(positions: Positions, readout) -> bool:
    """Whether ``positions`` are among those a head (of ``readout``) reads its answer at."""
    return positions in _decides(readout)


def warn_if_elsewhere(positions: Positions, readout, what: str) -> None:
    """A :class:`ReadoutWarning` when ``positions`` are not where the head decides."""
    if not reads_where_head_decides(positions, readout):
        _warn(repr(positions), readout, what)


def warn_if_scores_elsewhere(meta: dict, readout, what: str) -> None:
    """:func:`warn_if_elsewhere` for saved predictivity (its ``meta``), unless its positions
    were chosen by hand (``meta["positions_asked"]``); results saved before positions were
    recorded as data are compared by name."""
    if meta.get("positions_asked"):
        return
    if meta.get("positions_spec"):
        warn_if_elsewhere(positions_from_spec(meta["positions_spec"]), readout, what)
    elif "positions" in meta and meta["positions"] not in {repr(p) for p in _decides(readout)}:
        _warn(str(meta["positions"]), readout, what)


def _warn(where: str, readout, what: str) -> None:
    readout = getattr(readout, "readout", readout)
    warnings.warn(
        f"{what} reads predictivity at {where}, which a head with readout {readout!r} never "
        f"reads (it decides at {decision_positions(readout)}): the top neurons there may not "
        "carry the task. Leave positions= out to read where the head decides, or pass the "
        "positions explicitly to silence this",
        ReadoutWarning,
        stacklevel=4,
    )


# ---------------------------------------------------------------------------- JSON


_CLASSES = {
    c.__name__: c
    for c in (
        AllTokens,
        PositionRange,
        PromptTokens,
        MaskToken,
        LastToken,
        AnswerToken,
        PromptAndAnswer,
        Pooled,
    )
}


def positions_spec(positions: Positions) -> dict | None:
    """``positions`` as JSON-ready data (``None`` for a selector of the user's own class)."""
    if type(positions).__name__ not in _CLASSES or not is_dataclass(positions):
        return None
    args = {}
    for f in fields(positions):
        value = getattr(positions, f.name)
        args[f.name] = positions_spec(value) if isinstance(value, Positions) else value
    return {"class": type(positions).__name__, "args": args}


def positions_from_spec(spec: dict) -> Positions:
    """The selector :func:`positions_spec` wrote."""
    if not isinstance(spec, dict) or spec.get("class") not in _CLASSES:
        raise NeuronLensError(f"not a saved position selector: {spec!r}")
    args = {
        k: positions_from_spec(v) if isinstance(v, dict) else v
        for k, v in (spec.get("args") or {}).items()
    }
    return _CLASSES[spec["class"]](**args)
