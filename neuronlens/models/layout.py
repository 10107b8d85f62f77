"""Where a soft prompt sits in the sequence the model sees, and where the answer is read.

A head decides both (:class:`Placement`): the soft prompt goes before the input (the usual
prompt tuning) or after it (a causal LM, so that every prompt position has seen the whole
input), and the answer is read at one position (the template's mask token, the first or last
soft-prompt position, the last token) or pooled (``None``). For one batch,
:meth:`NeuronModel.layout <neuronlens.models.NeuronModel.layout>` turns a placement into a
:class:`Layout`: per example, where the prompt starts, where the answer is, which positions
are padding. Everything that needs positions (capture, interventions, heads) reads them
from the layout, so a prompt after the input needs no special case anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from neuronlens.errors import NeuronLensError

#: where a head reads its answer: the template's mask token, the first / last soft-prompt
#: position, the last non-padding token; ``None``: pooled (or in the T5 decoder)
ANSWERS = ("mask", "prompt_first", "prompt_last", "last")


@dataclass(frozen=True)
class Placement:
    """Where the soft prompt goes (``after_input``) and where the answer is read (``answer``)."""

    after_input: bool = False
    answer: str | None = None

    def __post_init__(self) -> None:
        if self.answer is not None and self.answer not in ANSWERS:
            raise NeuronLensError(f"answer must be one of {ANSWERS} or None, got {self.answer!r}")


@dataclass(frozen=True)
class Layout:
    """One batch's full sequence (soft prompt included), as the model sees it.

    Attributes:
        attention_mask: ``[B, T]`` of the full sequence (right padding).
        input_ids: ``[B, L]`` the tokenised input, without the prompt.
        n_prompt: soft-prompt length ``p``.
        prompt_start: ``[B]`` position of the first soft-prompt token of each example
            (0 before the input; the input's length after it).
        answer: ``[B]`` the position where the head reads its answer, or ``None``.
        after_input: whether the soft prompt follows the input.
        causal: whether a position sees only the positions up to it (causal LM).
    """

    attention_mask: Tensor
    input_ids: Tensor
    n_prompt: int
    prompt_start: Tensor
    answer: Tensor | None = None
    after_input: bool = False
    causal: bool = False

    def prompt_index(self) -> Tensor:
        """``[B, p]`` the soft-prompt positions of each example."""
        steps = torch.arange(self.n_prompt, device=self.prompt_start.device)
        return self.prompt_start.unsqueeze(1) + steps

    def prompt_mask(self) -> Tensor:
        """``[B, T]`` True at soft-prompt positions."""
        t = torch.arange(self.attention_mask.shape[1], device=self.attention_mask.device)
        start = self.prompt_start.unsqueeze(1)
        return (t >= start) & (t < start + self.n_prompt)

    def full_position(self, j: Tensor) -> Tensor:
        """Positions ``j`` (``[B, ...]``) of the input, as positions of the full sequence."""
        start = self.prompt_start.view(-1, *([1] * (j.dim() - 1)))
        return j + self.n_prompt * (j >= start).long()

    def input_start(self) -> Tensor:
        """``[B]`` position of the first input token (after a soft prompt placed before it)."""
        first = 0 if self.after_input else self.n_prompt
        return torch.full_like(self.prompt_start, first)

    def sees_input(self, idx: Tensor | None) -> Tensor:
        """Bool, shaped like ``idx`` (``[B, n]``; ``None``: every position ``[B, T]``): whether
        the activation at that position can depend on the input. In a causal LM a position
        before the first input token (a soft prompt prepended to the input) cannot."""
        if idx is None:
            idx = torch.arange(self.attention_mask.shape[1], device=self.attention_mask.device)
            idx = idx.expand(self.attention_mask.shape[0], -1)
        if not self.causal:
            return torch.ones_like(idx, dtype=torch.bool)
        return idx >= self.input_start().unsqueeze(1)


def make_layout(
    input_ids: Tensor,
    attention_mask: Tensor,
    n_prompt: int,
    placement: Placement | None = None,
    *,
    mask_token_id: int | None = None,
    causal: bool = False,
) -> Layout:
    """The :class:`Layout` of a right-padded batch with a soft prompt of ``n_prompt`` tokens."""
    placement = placement or Placement()
    b = input_ids.shape[0]
    lengths = attention_mask.sum(1).long()
    after = placement.after_input and n_prompt > 0
    start = lengths.clone() if after else torch.zeros(b, dtype=torch.long, device=lengths.device)
    full = torch.cat([attention_mask.new_ones(b, n_prompt), attention_mask], 1)
    if after:  # the real tokens are contiguous again: input, then prompt, then padding
        t = torch.arange(full.shape[1], device=full.device)
        full = (t < (lengths + n_prompt).unsqueeze(1)).to(attention_mask.dtype)
    layout = Layout(full, input_ids, n_prompt, start, None, after, causal)
    if placement.answer is None:
        return layout
    answer = _answer(layout, placement, mask_token_id)
    return Layout(full, input_ids, n_prompt, start, answer, after, causal)


def mask_positions(input_ids: Tensor, mask_token_id: int | None) -> Tensor:
    """``[B]`` the input position of each example's mask token (exactly one each)."""
    if mask_token_id is None:
        raise NeuronLensError("the answer is read at the mask token, but the tokenizer has none")
    hits = input_ids == mask_token_id
    counts = hits.sum(1)
    if not bool((counts == 1).all()):
        bad = int((counts != 1).nonzero()[0, 0])
        raise NeuronLensError(
            f"example {bad} of the batch has {int(counts[bad])} mask tokens; reading at the "
            "mask token needs exactly one per input (check the template)"
        )
    return hits.float().argmax(1)


def _answer(layout: Layout, placement: Placement, mask_token_id: int | None) -> Tensor:
    if placement.answer == "mask":
        return layout.full_position(mask_positions(layout.input_ids, mask_token_id))
    if placement.answer == "prompt_last" and layout.n_prompt == 0:
        placement = Placement(placement.after_input, "last")  # no prompt: the input's last token
    if placement.answer in ("prompt_first", "prompt_last"):
        if layout.n_prompt == 0:
            raise NeuronLensError(
                "this head reads its answer at a soft-prompt position, but there is no soft "
                "prompt: give it at least one prompt token (n_tokens >= 1)"
            )
        last = placement.answer == "prompt_last"
        return layout.prompt_start + (layout.n_prompt - 1 if last else 0)
    return layout.attention_mask.sum(1).long() - 1  # "last": last non-padding token


def place_prompt(x: Tensor, prompt_rows: Tensor, layout: Layout) -> Tensor:
    """``[B, p + L, ...]``: ``x`` (``[B, L, ...]``, one row per input position) with
    ``prompt_rows`` (``[B, p, ...]``) at the layout's soft-prompt positions."""
    p = layout.n_prompt
    if not layout.after_input:
        return torch.cat([prompt_rows, x], 1)
    length = x.shape[1]
    t = torch.arange(length + p, device=x.device).unsqueeze(0)
    start = layout.prompt_start.unsqueeze(1)
    # source index into cat([x, prompt]): input before the prompt, the prompt, then padding
    src = torch.where(t < start, t, torch.where(t < start + p, length + t - start, t - p))
    both = torch.cat([x, prompt_rows], 1)
    src = src.view(*src.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return both.gather(1, src)
