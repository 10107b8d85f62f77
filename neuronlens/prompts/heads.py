"""How a prompted model answers a classification task: verbalizer or linear head.

* :class:`Verbalizer` - logits of one label word per class, read where the model answers:
  at the mask token (masked LM), at the first decoder step (T5), or for the next token after
  the input (causal LM). Needs a trained LM head.
* :class:`LinearHead` - a linear layer on the mean-pooled last hidden state of the input
  tokens; for encoders shipped without an LM head (sentence-embedding BERTs such as
  all-MiniLM-L6-v2), and usable on any model.

A head also decides how a task's template is rendered for the model (:meth:`render`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from neuronlens.errors import NeuronLensError, ShapeMismatchError
from neuronlens.models.families import ModelKind
from neuronlens.models.model import Encoded, NeuronModel

_MARK = "\x00"


def _answer_suffix_is_empty(suffix: str) -> bool:
    return re.sub(r"[\s.!?,;:]", "", suffix) == ""


class Head(nn.Module):
    """Base class: ``class_logits(model, batch, prompt) -> [B, n_classes]``."""

    kind: str = ""
    n_classes: int

    def render(self, model: NeuronModel, task, text: str, text_b: str | None) -> str:
        raise NotImplementedError

    def trainable_copy(self) -> Head:
        """A copy whose parameters require grad (the heads of tuned results are frozen):
        ``tune_prompt(head=probe.head.trainable_copy())`` trains the prompt and a head that
        starts from the fitted probe, which is left as it is."""
        return copy.deepcopy(self).requires_grad_(True)

    def class_logits(
        self,
        model: NeuronModel,
        batch: Encoded,
        prompt: Tensor | None,
        *,
        embeds_require_grad: bool = False,
    ) -> Tensor:
        raise NotImplementedError


class Verbalizer(Head):
    """Label-word logits: one single-token word per class (``words``)."""

    kind = "verbalizer"

    def __init__(self, model: NeuronModel, words: Sequence[str]) -> None:
        super().__init__()
        model.require_lm_head()
        if model.kind not in (ModelKind.MASKED_LM, ModelKind.CAUSAL_LM, ModelKind.ENCODER_DECODER):
            raise NeuronLensError(f"a verbalizer needs an LM; {model.name} is {model.kind.value}")
        self.words = tuple(words)
        self.n_classes = len(self.words)
        ids = [label_word_id(model, w) for w in self.words]
        if len(set(ids)) != len(ids):
            raise NeuronLensError(f"label words {self.words} map to the same token ids {ids}")
        self.register_buffer("token_ids", torch.tensor(ids, dtype=torch.long), persistent=False)

    def render(self, model: NeuronModel, task, text: str, text_b: str | None) -> str:
        if model.kind is ModelKind.MASKED_LM:
            return task.render(text, text_b, mask_token=model.tokenizer.mask_token)
        full = task.render(text, text_b, mask_token=_MARK)
        if _MARK not in full:
            raise NeuronLensError(f"the template of task {task.name!r} has no {{mask}}")
        prefix, suffix = full.split(_MARK, 1)
        if model.kind is ModelKind.CAUSAL_LM:
            # the answer is the next token: cut at the mask when nothing but punctuation follows
            if _answer_suffix_is_empty(suffix):
                return prefix.rstrip()
            return (prefix + suffix).strip() + " Answer:"
        sentinel = "<extra_id_0>" if "<extra_id_0>" in model.tokenizer.get_vocab() else ""
        return (prefix + sentinel + suffix).strip()

    def class_logits(
        self,
        model: NeuronModel,
        batch: Encoded,
        prompt: Tensor | None,
        *,
        embeds_require_grad: bool = False,
    ) -> Tensor:
        p = 0 if prompt is None else prompt.shape[0]
        if model.kind is ModelKind.ENCODER_DECODER:
            logits = model.forward(batch, prompt=prompt, embeds_require_grad=embeds_require_grad)
            return logits[:, 0, self.token_ids]
        hidden, mask = model.hidden_states(
            batch, prompt=prompt, embeds_require_grad=embeds_require_grad
        )
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        if model.kind is ModelKind.MASKED_LM:
            hits = batch.input_ids == model.tokenizer.mask_token_id
            if not bool((hits.sum(1) == 1).all()):
                raise NeuronLensError(
                    "each input needs exactly one mask token for a masked-LM verbalizer"
                )
            pos = hits.float().argmax(1) + p
        else:
            pos = mask.sum(1) - 1  # last non-padding token (right padding)
        return model.lm_logits(hidden[rows, pos])[:, self.token_ids]


class LinearHead(Head):
    """``Linear(d_model, n_classes)`` on the mean of the last hidden state.

    ``pool="input"`` (default) averages over the input tokens, ``pool="all"`` over every
    non-padding position, soft-prompt positions included (on MiniLM / SST-2 "input" was
    2.5 points better on GLUE dev).
    """

    kind = "linear"

    def __init__(self, d_model: int, n_classes: int, pool: str = "input") -> None:
        super().__init__()
        if pool not in ("all", "input"):
            raise NeuronLensError(f"pool must be 'all' or 'input', got {pool!r}")
        self.n_classes = n_classes
        self.pool = pool
        self.linear = nn.Linear(d_model, n_classes)

    def render(self, model: NeuronModel, task, text: str, text_b: str | None) -> str:
        return text if text_b is None else f"{text} {model.tokenizer.sep_token or '|'} {text_b}"

    def class_logits(
        self,
        model: NeuronModel,
        batch: Encoded,
        prompt: Tensor | None,
        *,
        embeds_require_grad: bool = False,
    ) -> Tensor:
        return self.linear(
            self.pooled(model, batch, prompt, embeds_require_grad=embeds_require_grad)
        )

    def pooled(
        self,
        model: NeuronModel,
        batch: Encoded,
        prompt: Tensor | None,
        *,
        embeds_require_grad: bool = False,
    ) -> Tensor:
        """``[B, d_model]``: the mean-pooled last hidden state this head reads."""
        hidden, mask = model.hidden_states(
            batch, prompt=prompt, embeds_require_grad=embeds_require_grad
        )
        if hidden.shape[-1] != self.linear.in_features:
            raise ShapeMismatchError(
                f"this linear head reads {self.linear.in_features}-wide hidden states, but "
                f"{model.name} has d_model {hidden.shape[-1]}: use a head made for this model "
                "(head='linear', or the head of a prompt tuned on it)"
            )
        p = 0 if prompt is None or self.pool == "all" else prompt.shape[0]
        hidden, mask = hidden[:, p:], mask[:, p:].to(hidden.dtype)
        return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)


def label_word_id(model: NeuronModel, word: str) -> int:
    """The single token id of a label word (as it follows a space, or bare)."""
    tok = model.tokenizer
    for candidate in (" " + word, word):
        ids = tok.encode(candidate, add_special_tokens=False)
        if len(ids) == 1 and ids[0] != tok.unk_token_id:
            return int(ids[0])
    pieces = tok.tokenize(" " + word)
    raise NeuronLensError(
        f"label word {word!r} is not a single token for {model.name} (it splits into {pieces}); "
        "choose single-token label words, e.g. with Task(verbalizer=...)"
    )


def make_head(model: NeuronModel, head: str | Head, task) -> Head:
    """``"auto"`` (verbalizer when the model has a trained LM head, else linear),
    ``"verbalizer"``, ``"linear"``, or a ready :class:`Head`."""
    if isinstance(head, Head):
        return head
    if head == "auto":
        head = "linear" if model.kind is ModelKind.ENCODER else "verbalizer"
    if head == "verbalizer":
        return Verbalizer(model, task.verbalizer)
    if head == "linear":
        return LinearHead(model.d_model, task.num_labels)
    raise NeuronLensError(f"unknown head {head!r}: use 'auto', 'verbalizer' or 'linear'")
