"""Tuned prompts and what they score: :class:`PromptResult` (save / load), :func:`evaluate`.

tuned.save("prompts/sst2-seed0")            # .safetensors + .json (model, p, head, readout)
tuned = PromptResult.load("prompts/sst2-seed0", model)
evaluate(model, tuned, get_task("sst2").load("dev")).accuracy
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import Tensor

import neuronlens.checks as checks
from neuronlens.errors import NeuronLensError, NonFiniteActivationError, ShapeMismatchError
from neuronlens.interventions import as_interventions, intervene
from neuronlens.io import load_result, save_result
from neuronlens.models.model import NeuronModel
from neuronlens.models.placement import MASTER_DTYPE, dtype_name
from neuronlens.models.prefix import Prefix, attention_dims, sequence_positions
from neuronlens.prompts.heads import Head, LinearHead, Verbalizer, class_logits, encode_task
from neuronlens.tasks import get_task, list_tasks

DEFAULT_TOKENS = 100  # the robustness paper; SKELETON / SKIP use 20


def init_prompt(model: NeuronModel, n_tokens: int, *, seed: int = 0) -> Tensor:
    """``[n_tokens, d_model]`` initialised from the embeddings of random vocabulary tokens.

    ``n_tokens=0`` gives an empty prompt (the model sees the plain input). The prompt is
    float32 (trained prompts are float32 master weights on a half-precision model too)."""
    checks.integer("n_tokens", n_tokens, minimum=0)
    special = set(model.tokenizer.all_special_ids)
    vocab = min(len(model.tokenizer), model.vocab_size)
    pool = torch.tensor([i for i in range(vocab) if i not in special])
    g = torch.Generator().manual_seed(seed)
    ids = pool[torch.randint(len(pool), (n_tokens,), generator=g)]
    return model.input_embeddings.weight[ids.to(model.device)].detach().to(MASTER_DTYPE)


@dataclass
class PromptResult:
    """A tuned soft prompt (or prefix) with its head and what it was tuned on.

    ``prompt`` is a ``[p, d_model]`` soft prompt, or a :class:`~neuronlens.models.prefix.Prefix`
    (prefix tuning); ``method`` says how it was trained (``"prompt"``, ``"p-tuning"``,
    ``"prefix"``). ``head`` is a :class:`Verbalizer` or :class:`LinearHead`; ``history`` holds
    one entry per validation: ``{"step", "train_loss", "val_accuracy"}``.
    """

    prompt: Tensor | Prefix
    head: Head
    task: str
    label_space: str
    label_names: tuple[str, ...]
    seed: int
    model_name: str
    model_kind: str
    val_accuracy: float | None = None
    history: list[dict] = field(default_factory=list)
    train_size: int = 0
    method: str = "prompt"
    model_dtype: str = "float32"

    @property
    def is_prefix(self) -> bool:
        return isinstance(self.prompt, Prefix)

    @property
    def n_tokens(self) -> int:
        return self.prompt.n_tokens if self.is_prefix else int(self.prompt.shape[0])

    @property
    def d_model(self) -> int | None:
        """The soft prompt's width (``None`` for a prefix, which lives in attention space)."""
        return None if self.is_prefix else int(self.prompt.shape[1])

    def metadata(self) -> dict:
        return {
            "model": self.model_name,
            "model_kind": self.model_kind,
            "model_dtype": self.model_dtype,
            "hidden_size": self.d_model,
            "n_tokens": self.n_tokens,
            "head": self.head.kind,
            "verbalizer": list(self.head.words) if isinstance(self.head, Verbalizer) else None,
            "pool": self.head.pool if isinstance(self.head, LinearHead) else None,
            "readout": self.head.readout,
            "task": self.task,
            "label_space": self.label_space,
            "label_names": list(self.label_names),
            "seed": self.seed,
            "val_accuracy": self.val_accuracy,
            "train_size": self.train_size,
            "history": self.history,
            "method": self.method,
            "prefix_shape": list(self.prompt.kv.shape) if self.is_prefix else None,
        }

    def save(self, path: str | os.PathLike) -> str:
        """Write ``path.safetensors`` (prompt, linear head) and ``path.json`` (metadata)."""
        tensors = {"prefix": self.prompt.kv} if self.is_prefix else {"prompt": self.prompt}
        if isinstance(self.head, LinearHead):
            tensors["head.weight"] = self.head.linear.weight
            tensors["head.bias"] = self.head.linear.bias
        return str(save_result(path, tensors, self.metadata(), kind="soft_prompt"))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        model: NeuronModel,
        *,
        readout: str | None = None,
        other_model: bool = False,
        any_dtype: bool = False,
    ) -> PromptResult:
        """Load a saved prompt for ``model``.

        A model of another name (unless ``other_model=True``: a prompt only means something
        in the embedding space it was tuned in), hidden size or kind, or a ``readout`` other
        than the one the prompt was tuned with (when given), is an error. So is a model in
        another dtype than the one the prompt was tuned at (``any_dtype=True`` loads it
        anyway: the prompt then meets activations it was not trained on). Files saved before
        readouts were recorded load with the readout they were tuned with; files saved
        before dtypes were recorded were tuned in float32. The prompt and head load as
        float32 master weights, whatever the model's dtype."""
        tensors, meta = load_result(path, kind="soft_prompt")
        if meta["model"] != model.name and not other_model:
            raise NeuronLensError(
                f"{path}: the prompt was tuned on {meta['model']!r}, not on {model.name!r}; "
                "load it into the model it was tuned on (a pruned model keeps its source's "
                "name), or pass other_model=True if you mean to try it elsewhere"
            )
        tuned_at = _check_dtype(path, meta, model, any_dtype)
        if meta.get("method") == "prefix":
            _check_prefix(path, tensors["prefix"], meta, model)
        elif meta["hidden_size"] != model.d_model:
            raise ShapeMismatchError(
                f"{path}: the prompt was tuned for hidden size {meta['hidden_size']} "
                f"({meta['model']}), but {model.name} has {model.d_model}"
            )
        if meta["head"] == "verbalizer" and meta["model_kind"] != model.kind.value:
            raise NeuronLensError(
                f"{path}: a verbalizer prompt of a {meta['model_kind']} model cannot run on "
                f"{model.name}, a {model.kind.value} model"
            )
        saved = meta.get("readout") or _legacy_readout(meta)
        if readout is not None and readout != saved:
            raise NeuronLensError(
                f"{path}: the prompt was tuned with readout {saved!r}, not {readout!r}; a "
                "prompt only means something where it was trained to be read: load it without "
                "readout= or tune one for that readout"
            )
        if "prompt" in tensors:
            _check_prompt_shape(path, tensors["prompt"], model)
        if meta["head"] == "linear":
            _check_head_shape(path, tensors, len(meta["label_names"]), model)
            head: Head = LinearHead(
                model.d_model, len(meta["label_names"]), meta.get("pool") or "input", saved
            )
            with torch.no_grad():
                head.linear.weight.copy_(tensors["head.weight"])
                head.linear.bias.copy_(tensors["head.bias"])
        else:
            head = Verbalizer(model, meta["verbalizer"], readout=saved)
        head.requires_grad_(False)
        prompt = (Prefix(tensors["prefix"]) if "prefix" in tensors else tensors["prompt"]).to(
            model.device, MASTER_DTYPE
        )
        result = cls(
            prompt=prompt,
            head=head.to(model.device),
            task=meta["task"],
            label_space=meta["label_space"],
            label_names=tuple(meta["label_names"]),
            seed=meta["seed"],
            model_name=meta["model"],
            model_kind=meta["model_kind"],
            val_accuracy=meta["val_accuracy"],
            history=meta["history"],
            train_size=meta.get("train_size", 0),
            method=meta.get("method", "prompt"),
            model_dtype=tuned_at,
        )
        _check_finite(result.prompt, result.head, str(path))
        return result


def _check_dtype(path, meta: dict, model: NeuronModel, any_dtype: bool) -> str:
    """The dtype a saved prompt was tuned at (float32 before dtypes were recorded), checked
    against the model's unless ``any_dtype``."""
    tuned_at = meta.get("model_dtype", "float32")
    if tuned_at != dtype_name(model.dtype) and not any_dtype:
        raise NeuronLensError(
            f"{path}: the prompt was tuned on {meta['model']} in {tuned_at}, but "
            f"{model.name} runs in {dtype_name(model.dtype)}; load the model in {tuned_at} "
            f"(load_model(..., dtype={tuned_at!r})), or pass any_dtype=True to try it anyway"
        )
    return tuned_at


def _check_finite(prompt: Tensor | Prefix | None, head: Head, where: str) -> None:
    """Refuse a prompt (or prefix) or head holding NaN or inf: its logits would be NaN, and
    their argmax a plausible-looking accuracy."""
    hint = (
        "its logits would be NaN: it comes from a diverged training run (tune it again with a "
        "lower lr) or was edited by hand"
    )
    if prompt is not None:
        prefix = isinstance(prompt, Prefix)
        values, kind = (prompt.kv, "prefix") if prefix else (prompt, "soft prompt")
        checks.finite_tensor(f"{where}: the {kind}", values.detach(), hint=hint)
    for name, param in head.named_parameters():
        checks.finite_tensor(f"{where}: the head's {name}", param.detach(), hint=hint)


def _check_prompt_shape(path, prompt: Tensor, model: NeuronModel) -> None:
    if prompt.dim() != 2 or prompt.shape[1] != model.d_model:
        raise ShapeMismatchError(
            f"{path}: the saved soft prompt is {list(prompt.shape)}, but {model.name} needs "
            f"[n_tokens, {model.d_model}]: the file does not match its own metadata; tune the "
            "prompt again"
        )


def _check_head_shape(path, tensors: dict, n_classes: int, model: NeuronModel) -> None:
    """The saved linear head must be ``[n_classes, d_model]`` (+ bias) for the file's classes
    and this model."""
    want = {"head.weight": [n_classes, model.d_model], "head.bias": [n_classes]}
    got = {k: list(tensors[k].shape) if k in tensors else None for k in want}
    if got != want:
        raise ShapeMismatchError(
            f"{path}: the saved linear head is weight {got['head.weight']}, bias "
            f"{got['head.bias']}, but {n_classes} classes on {model.name} (d_model "
            f"{model.d_model}) need weight {want['head.weight']}, bias {want['head.bias']}: the "
            "head was saved for another number of classes or another model; load the file "
            "that belongs to this prompt, or tune it again"
        )


def _check_prefix(path, kv: Tensor, meta: dict, model: NeuronModel) -> None:
    layers, kv_heads, head_dim = attention_dims(model.hf_model.config)
    if kv.dim() != 4 or kv.shape[:2] != (layers, 2) or kv.shape[3] != kv_heads * head_dim:
        raise ShapeMismatchError(
            f"{path}: the prefix is {list(kv.shape)} (layers, key / value, positions, width), "
            f"but {model.name} needs [{layers}, 2, p, {kv_heads * head_dim}]"
        )


def _legacy_readout(meta: dict) -> str:
    """The readout of a prompt saved before readouts were recorded (the placements then)."""
    if meta["head"] == "linear":
        return "pool"
    return {"masked_lm": "mask", "causal_lm": "last"}.get(meta["model_kind"], "prompt")


@dataclass
class EvalResult:
    """Accuracy (and macro F1) of a prompt on a task split."""

    accuracy: float
    macro_f1: float
    n: int
    predictions: Tensor
    labels: Tensor
    task: str
    split: str

    def __repr__(self) -> str:
        return (
            f"EvalResult({self.task}/{self.split}: accuracy={self.accuracy:.4f}, "
            f"macro_f1={self.macro_f1:.4f}, n={self.n})"
        )


def macro_f1(pred: Tensor, gold: Tensor, n_classes: int) -> float:
    scores = []
    for c in range(n_classes):
        tp = int(((pred == c) & (gold == c)).sum())
        fp = int(((pred == c) & (gold != c)).sum())
        fn = int(((pred != c) & (gold == c)).sum())
        denom = 2 * tp + fp + fn
        scores.append(0.0 if denom == 0 else 2 * tp / denom)
    return sum(scores) / n_classes


def evaluate(
    model: NeuronModel,
    tuned: PromptResult | None,
    data,
    *,
    task=None,
    head: Head | None = None,
    batch_size: int = 64,
    max_length: int | None = 256,
    interventions=None,
) -> EvalResult:
    """Accuracy and macro F1 of a prompt on a task split (any task of the same label space).

    Evaluating task A's prompt on task B's data is prompt transferability. ``tuned=None``
    evaluates the model without a prompt (zero-shot with ``head``, a Verbalizer).
    ``interventions`` (see :mod:`neuronlens.interventions`) are applied during the evaluation.

    Examples:
        >>> evaluate(model, tuned, dev).accuracy  # doctest: +SKIP
        >>> evaluate(model, tuned, dev, interventions=[Zero(top)])  # doctest: +SKIP
    """
    data = checks.split("evaluate's data", data)
    task = task or _registered(data.task)
    if tuned is not None:
        if tuned.label_space != task.label_space or len(tuned.label_names) != task.num_labels:
            raise NeuronLensError(
                f"a prompt for {tuned.task!r} (label space {tuned.label_space!r}) cannot be "
                f"evaluated on {task.name!r} (label space {task.label_space!r})"
            )
        head = tuned.head
    if head is None:
        raise NeuronLensError(
            "evaluate without a prompt needs head= (e.g. Verbalizer(model, words))"
        )
    head.check_model(model)
    _check_finite(None if tuned is None else tuned.prompt, head, "evaluate's prompt")
    checks.integer("batch_size", batch_size, minimum=1)
    enc = encode_task(model, head, task, data, max_length=max_length)
    prompt = None if tuned is None or tuned.n_tokens == 0 else tuned.prompt
    n_prompt = sequence_positions(prompt)
    ivs = as_interventions(interventions)
    with intervene(model, *ivs, n_prompt=n_prompt):
        logits = class_logits(model, head, prompt, enc, batch_size=batch_size)
    _check_logits(logits, model, task, ivs)
    pred = logits.argmax(-1).cpu()
    gold = torch.tensor(data.labels)
    return EvalResult(
        accuracy=float((pred == gold).float().mean()),
        macro_f1=macro_f1(pred, gold, task.num_labels),
        n=len(gold),
        predictions=pred,
        labels=gold,
        task=task.name,
        split=data.split,
    )


def _registered(name: str):
    """The registered task ``name``, for a split evaluated without ``task=``."""
    if name not in list_tasks():
        raise NeuronLensError(
            f"evaluate got a split of task {name!r}, which is not registered, so its template "
            "and label space are unknown: pass the task, evaluate(model, tuned, data, "
            "task=my_task), or register it once with neuronlens.tasks.register_task(my_task)"
        )
    return get_task(name)


def _check_logits(logits: Tensor, model: NeuronModel, task, ivs: list) -> None:
    """NaN logits have an argmax too (and so a plausible accuracy): refuse them, naming the
    likely cause."""
    bad = ~torch.isfinite(logits).all(-1)
    if not bool(bad.any()):
        return
    names = ", ".join(type(iv).__name__ for iv in ivs)
    cause = (
        f"the interventions ({names}) are the likely cause: they write values so large "
        "(a Noise std or scale, Replace values) that the model overflows; without them, check "
        "the model's dtype and weights"
        if ivs
        else "the prompt and head are finite, so the likely cause is an intervention "
        "active around this call (with intervene(...)), a prompt of huge values, or the "
        "model's dtype (float16 overflow?) or weights"
    )
    raise NonFiniteActivationError(
        f"{int(bad.sum())} of {len(bad)} examples of task {task.name!r} give NaN or infinite "
        f"class logits in {model.name} (first: example {int(bad.nonzero()[0])}): {cause}"
    )
