"""How a prompted model answers a classification task: verbalizer or linear head, and where.

* :class:`Verbalizer` - logits of one label word per class. Needs a trained LM head.
* :class:`LinearHead` - a linear layer on the last hidden state; for encoders shipped
  without an LM head (sentence-embedding BERTs such as all-MiniLM-L6-v2), usable on any model.

Where the answer is read is the head's ``readout`` (the original skill-neuron code reads it
inside the soft prompt, so the prompt positions include the position where the decision
forms):

============ ================================================ ===============================
readout      verbalizer                                       linear head
============ ================================================ ===============================
``"prompt"`` masked LM: the mask token's embedding is prompt   the last hidden state at prompt
             position 0, read there; causal LM: the prompt    position 0 (causal LM: the
             follows the input, next-token logits at its      prompt follows the input, read
             last position; T5: encoder prompt, first         at its last position)
             decoder step
``"mask"``   masked LM: at the template's mask after the text
``"last"``   causal LM: prompt before the input, next-token
             logits after the input's last token
``"pool"``                                                    mean of the input tokens' last
                                                              hidden states (``pool="all"``:
                                                              prompt positions too)
============ ================================================ ===============================

``readout="auto"``: ``"prompt"`` on causal LMs and T5 (in a causal LM a prompt before the
input is computed before the model has seen the input, so its positions cannot carry skill
neurons), ``"mask"`` for masked-LM verbalizers, ``"pool"`` for linear heads elsewhere.

A head also decides how a task's template is rendered for the model (:meth:`Head.render`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from neuronlens.errors import EmptyDataError, NeuronLensError, ShapeMismatchError
from neuronlens.models.families import ModelKind
from neuronlens.models.layout import Layout, Placement
from neuronlens.models.model import Encoded, NeuronModel
from neuronlens.models.placement import widen

_MARK = "\x00"

#: the readouts each head allows on each kind of model (the first is ``"auto"``'s choice)
VERBALIZER_READOUTS = {
    ModelKind.MASKED_LM: ("mask", "prompt"),
    ModelKind.CAUSAL_LM: ("prompt", "last"),
    ModelKind.ENCODER_DECODER: ("prompt",),
}
LINEAR_READOUTS = ("pool", "prompt")


def _answer_suffix_is_empty(suffix: str) -> bool:
    return re.sub(r"[\s.!?,;:]", "", suffix) == ""


def _plain(model: NeuronModel, text: str, text_b: str | None) -> str:
    """The input alone (a second text after the tokenizer's separator)."""
    return text if text_b is None else f"{text} {model.tokenizer.sep_token or '|'} {text_b}"


class Head(nn.Module):
    """Base class: ``class_logits(model, batch, prompt) -> [B, n_classes]``.

    ``readout`` says where the answer is read (see the module docstring); ``placement(model)``
    where the soft prompt goes and which position is the answer.
    """

    kind: str = ""
    readout: str = ""
    n_classes: int

    def render(self, model: NeuronModel, task, text: str, text_b: str | None) -> str:
        raise NotImplementedError

    def placement(self, model: NeuronModel) -> Placement:
        raise NotImplementedError

    def fixed_rows(self, model: NeuronModel) -> Tensor:
        """``[k, d_model]`` rows the soft prompt starts with that are not trained (a masked
        LM's mask embedding for ``readout="prompt"``); ``k = 0`` for most heads."""
        return model.input_embeddings.weight[:0].detach()

    def check_model(self, model: NeuronModel) -> None:
        """Raise unless this head can run on ``model`` (kind, readout)."""

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
    """Label-word logits: one single-token word per class (``words``), read at ``readout``."""

    kind = "verbalizer"

    def __init__(self, model: NeuronModel, words: Sequence[str], readout: str = "auto") -> None:
        super().__init__()
        model.require_lm_head()
        if model.kind not in VERBALIZER_READOUTS:
            raise NeuronLensError(f"a verbalizer needs an LM; {model.name} is {model.kind.value}")
        allowed = VERBALIZER_READOUTS[model.kind]
        readout = allowed[0] if readout == "auto" else readout
        if readout not in allowed:
            raise NeuronLensError(
                f"a verbalizer on a {model.kind.value} model reads its answer at one of "
                f"{list(allowed)} (or 'auto'), not {readout!r}"
            )
        self.readout = readout
        self.model_kind = model.kind
        self.words = tuple(words)
        self.n_classes = len(self.words)
        ids = [label_word_id(model, w) for w in self.words]
        if len(set(ids)) != len(ids):
            raise NeuronLensError(f"label words {self.words} map to the same token ids {ids}")
        self.register_buffer("token_ids", torch.tensor(ids, dtype=torch.long), persistent=False)

    def check_model(self, model: NeuronModel) -> None:
        if model.kind is not self.model_kind:
            raise NeuronLensError(
                f"this verbalizer reads a {self.model_kind.value} model's answer "
                f"(readout {self.readout!r}); {model.name} is a {model.kind.value} model"
            )

    def placement(self, model: NeuronModel) -> Placement:
        self.check_model(model)
        if model.kind is ModelKind.ENCODER_DECODER:
            return Placement()
        if model.kind is ModelKind.MASKED_LM:
            return Placement(answer="prompt_first" if self.readout == "prompt" else "mask")
        if self.readout == "prompt":
            return Placement(after_input=True, answer="prompt_last")
        return Placement(answer="last")

    def fixed_rows(self, model: NeuronModel) -> Tensor:
        if model.kind is ModelKind.MASKED_LM and self.readout == "prompt":
            mask_id = torch.tensor([model.tokenizer.mask_token_id], device=model.device)
            return model.input_embeddings(mask_id).detach()
        return super().fixed_rows(model)

    def render(self, model: NeuronModel, task, text: str, text_b: str | None) -> str:
        if model.kind is ModelKind.MASKED_LM:
            if self.readout == "prompt":  # the mask is prompt position 0: the input alone
                return _plain(model, text, text_b)
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
        placement = self.placement(model)
        if model.kind is ModelKind.ENCODER_DECODER:
            logits = model.forward(batch, prompt=prompt, embeds_require_grad=embeds_require_grad)
            return logits[:, 0, self.token_ids.to(logits.device)].float()
        hidden, layout = model.hidden_states(
            batch, prompt=prompt, placement=placement, embeds_require_grad=embeds_require_grad
        )
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        logits = model.lm_logits(hidden[rows, layout.answer.to(hidden.device)])
        return logits[:, self.token_ids.to(logits.device)].float()  # float32 from any dtype


class LinearHead(Head):
    """``Linear(d_model, n_classes)`` on the last hidden state, read at ``readout``.

    ``readout="pool"`` (default): the mean over the input tokens (``pool="input"``) or over
    every non-padding position, soft-prompt positions included (``pool="all"``);
    ``readout="prompt"``: the hidden state at the first soft-prompt position (on a causal LM
    the prompt follows the input and is read at its last position).
    """

    kind = "linear"

    def __init__(
        self, d_model: int, n_classes: int, pool: str = "input", readout: str = "pool"
    ) -> None:
        super().__init__()
        if pool not in ("all", "input"):
            raise NeuronLensError(f"pool must be 'all' or 'input', got {pool!r}")
        if readout not in LINEAR_READOUTS:
            raise NeuronLensError(
                f"a linear head reads {list(LINEAR_READOUTS)} (or 'auto' in tune_prompt), "
                f"not {readout!r}"
            )
        self.n_classes = n_classes
        self.pool = pool
        self.readout = readout
        self.linear = nn.Linear(d_model, n_classes)

    def render(self, model: NeuronModel, task, text: str, text_b: str | None) -> str:
        return _plain(model, text, text_b)

    def placement(self, model: NeuronModel) -> Placement:
        if self.readout == "pool":
            return Placement()
        if model.kind is ModelKind.CAUSAL_LM:
            return Placement(after_input=True, answer="prompt_last")
        return Placement(answer="prompt_first")

    def class_logits(
        self,
        model: NeuronModel,
        batch: Encoded,
        prompt: Tensor | None,
        *,
        embeds_require_grad: bool = False,
    ) -> Tensor:
        pooled = self.pooled(model, batch, prompt, embeds_require_grad=embeds_require_grad)
        w = self.linear.weight  # float32 master weights on a half-precision model too
        return self.linear(pooled.to(w.device, w.dtype))

    def pooled(
        self,
        model: NeuronModel,
        batch: Encoded,
        prompt: Tensor | None,
        *,
        embeds_require_grad: bool = False,
    ) -> Tensor:
        """``[B, d_model]``: the (pooled) last hidden state this head reads, in float32 when
        the model runs in half precision (the mean is taken in float32)."""
        hidden, layout = model.hidden_states(
            batch,
            prompt=prompt,
            placement=self.placement(model),
            embeds_require_grad=embeds_require_grad,
        )
        if hidden.shape[-1] != self.linear.in_features:
            raise ShapeMismatchError(
                f"this linear head reads {self.linear.in_features}-wide hidden states, but "
                f"{model.name} has d_model {hidden.shape[-1]}: use a head made for this model "
                "(head='linear', or the head of a prompt tuned on it)"
            )
        hidden = widen(hidden)
        if self.readout == "prompt":
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            return hidden[rows, layout.answer.to(hidden.device)]
        return _mean_pool(hidden, layout, self.pool == "all")


def _mean_pool(hidden: Tensor, layout: Layout, with_prompt: bool) -> Tensor:
    mask = layout.attention_mask.to(hidden.device).bool()
    if not with_prompt and layout.n_prompt:
        mask = mask & ~layout.prompt_mask().to(mask.device)
    if not layout.after_input and not with_prompt:  # the prompt is a prefix: slice it off
        p = layout.n_prompt
        hidden, mask = hidden[:, p:], mask[:, p:]
    mask = mask.to(hidden.dtype)
    return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)


def render_texts(model: NeuronModel, head: Head, task, data) -> list[str]:
    """``data`` (a task split) rendered with the task's template, as this head reads it."""
    if len(data) == 0:
        raise EmptyDataError(f"task {task.name!r}: no examples to render")
    texts_b = data.texts_b or (None,) * len(data)
    return [head.render(model, task, a, b) for a, b in zip(data.texts, texts_b, strict=True)]


def encode_task(
    model: NeuronModel, head: Head, task, data, *, max_length: int | None = 256
) -> Encoded:
    """Render ``data`` (a task split) with the task's template for this head, and tokenise."""
    return model.encode(render_texts(model, head, task, data), max_length=max_length)


def class_logits(
    model: NeuronModel, head: Head, prompt: Tensor | None, enc: Encoded, *, batch_size: int = 64
) -> Tensor:
    """``[N, n_classes]`` logits for every example, without gradients."""
    out = []
    with torch.no_grad():
        for start in range(0, len(enc), batch_size):
            rows = torch.arange(
                start, min(start + batch_size, len(enc)), device=enc.input_ids.device
            )
            out.append(head.class_logits(model, enc[rows], prompt).float())
    return torch.cat(out)


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


#: where a head reads the answer when there is no soft prompt, by model kind
PROMPTLESS_READOUT = {
    "masked_lm": "mask",
    "causal_lm": "last",
    "encoder_decoder": "prompt",  # T5's first decoder step
    "encoder": "pool",
}


def promptless_readout(model: NeuronModel, head: str | Head, readout: str) -> str:
    """``readout="auto"`` for a head with no soft prompt to read at (prefix tuning,
    fine-tuning): the mask, the last token, T5's first decoder step, or the pooled input for
    a linear head. A given readout, or a ready :class:`Head`, is left as it is."""
    if readout != "auto" or isinstance(head, Head):
        return readout
    kind = "encoder" if head == "linear" else model.kind.value
    return PROMPTLESS_READOUT.get(kind, readout)


def make_head(model: NeuronModel, head: str | Head, task, readout: str = "auto") -> Head:
    """``"auto"`` (verbalizer when the model has a trained LM head, else linear),
    ``"verbalizer"``, ``"linear"``, or a ready :class:`Head` (whose readout must then agree
    with ``readout`` unless that is ``"auto"``)."""
    if isinstance(head, Head):
        head.check_model(model)
        if readout not in ("auto", head.readout):
            raise NeuronLensError(
                f"the given {head.kind} head reads its answer at {head.readout!r}, but "
                f"readout={readout!r} was asked for: pass one or the other"
            )
        return head
    if head == "auto":
        head = "linear" if model.kind is ModelKind.ENCODER else "verbalizer"
    if head == "verbalizer":
        return Verbalizer(model, task.verbalizer, readout=readout)
    if head == "linear":
        if readout == "auto":
            readout = "prompt" if model.kind is ModelKind.CAUSAL_LM else "pool"
        return LinearHead(model.d_model, task.num_labels, readout=readout)
    raise NeuronLensError(f"unknown head {head!r}: use 'auto', 'verbalizer' or 'linear'")
