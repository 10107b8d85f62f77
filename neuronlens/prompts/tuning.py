"""Prompt tuning on a frozen model (Lester et al. 2021).

A soft prompt is ``p`` trainable vectors in embedding space, placed before the input (or
after it, where the head's ``readout`` says). Only the prompt (and a linear head, when the
model answers through one) gets gradients; the model's weights stay bit for bit unchanged.
Training uses AdamW, shuffled batches from a seeded generator, validation-based early
stopping (the best prompt is kept), and a progress bar. How it trains is one
:class:`TrainingSettings`, validated once and shared with the pruning searches and study
configs.

    tuned = tune_prompt(model, get_task("sst2"), n_tokens=20, epochs=1, seed=0)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

import neuronlens.checks as checks
from neuronlens.errors import EmptyDataError, NeuronLensError, ShapeMismatchError
from neuronlens.models.model import NeuronModel
from neuronlens.models.placement import MASTER_DTYPE, dtype_name
from neuronlens.models.prefix import T5_REASON, Prefix, prefix_cache
from neuronlens.progress import tqdm
from neuronlens.prompts.heads import (
    Head,
    class_logits,
    encode_task,
    make_head,
    promptless_readout,
)
from neuronlens.prompts.reparam import PrefixEncoder, PromptEncoder, encoder_params
from neuronlens.prompts.results import DEFAULT_TOKENS, PromptResult, init_prompt
from neuronlens.tasks import get_task


@dataclass(frozen=True)
class TrainingSettings:
    """How a prompt is trained. Checked when built, before any data is loaded.

    Attributes:
        epochs, max_steps: training length (``max_steps`` wins when given).
        batch_size: examples per step.
        lr, head_lr: AdamW learning rates of the prompt (or of the prefix / P-tuning
            encoder) and of a trained head. ``lr=None``: the method's own default
            (:data:`DEFAULT_LR`: 3e-2 for prompt tuning and P-tuning, 1e-3 for prefix
            tuning, whose MLP-made keys and values stall at chance with 3e-2 on MiniLM /
            SST-2, see ``docs/results.md`` section 7).
        weight_decay: AdamW weight decay.
        schedule, warmup_steps: ``"constant"`` learning rates, or ``"linear"``: decay to 0
            over the training steps; either after a linear warm-up of ``warmup_steps``.
        ema_decay: ``None`` validates and returns the trained weights; a decay in (0, 1),
            e.g. 0.998, keeps an exponential moving average of the prompt and the trained
            head parameters (decay ``min(ema_decay, (1 + t) / (10 + t))`` at step ``t``) and
            validates and returns the average instead.
        eval_every: steps between validations (``None``: 4 times per epoch); training stops
            after ``patience`` validations without a new best, never before ``min_steps``
            (validations before it still pick the best prompt).
        max_length: truncation of the rendered inputs, in tokens.
        val_limit: validation examples drawn from the task's own validation split.
        converge_window, converge_tol: stop once the training loss has converged (SKIP
            prunes a converged prefix): the mean loss of the last ``converge_window`` steps
            fell by less than ``converge_tol`` (relative) from the window before; never
            before ``min_steps``. ``None``: train the full length.
    """

    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 16
    lr: float | None = None
    head_lr: float = 1e-2
    weight_decay: float = 1e-5
    schedule: str = "constant"
    warmup_steps: int = 0
    ema_decay: float | None = None
    eval_every: int | None = None
    patience: int = 3
    min_steps: int = 0
    max_length: int | None = 128
    val_limit: int | None = 500
    converge_window: int | None = None
    converge_tol: float = 0.01

    def __post_init__(self) -> None:
        """Reject settings that would divide by zero, train nothing or climb the loss."""
        _check_types(self)
        _check_counts(self)
        for name in ("lr", "head_lr", "weight_decay"):
            value = getattr(self, name)
            if name == "lr" and value is None:  # the method's default
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise NeuronLensError(f"{name} must be a number >= 0, got {value!r}")
        if self.schedule not in ("constant", "linear"):
            raise NeuronLensError(f"schedule must be 'constant' or 'linear', got {self.schedule!r}")
        if self.ema_decay is not None and (
            isinstance(self.ema_decay, bool)
            or not isinstance(self.ema_decay, int | float)
            or not 0 < self.ema_decay < 1
        ):
            raise NeuronLensError(
                f"ema_decay must be None or a number in (0, 1), e.g. 0.998; got {self.ema_decay!r}"
            )

    @classmethod
    def of(cls, settings: TrainingSettings | None = None, **overrides) -> TrainingSettings:
        """``settings`` (default: the defaults) with ``overrides``; an unknown name is an
        error that lists the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise NeuronLensError(f"unknown training setting(s) {unknown}; known: {sorted(known)}")
        return replace(settings or cls(), **overrides)


#: the numeric settings: name -> (an integer?, may be None?)
_NUMERIC = {
    "epochs": (False, False),
    "max_steps": (True, True),
    "batch_size": (True, False),
    "lr": (False, True),
    "head_lr": (False, False),
    "weight_decay": (False, False),
    "warmup_steps": (True, False),
    "ema_decay": (False, True),
    "eval_every": (True, True),
    "patience": (True, False),
    "min_steps": (True, False),
    "max_length": (True, True),
    "val_limit": (True, True),
    "converge_window": (True, True),
    "converge_tol": (False, False),
}


def _check_types(s: TrainingSettings) -> None:
    """Every numeric setting a number of its kind, and finite (``epochs = inf`` would
    overflow the step count, ``lr = inf`` train to NaN); an error names the field."""
    for name, (integer, optional) in _NUMERIC.items():
        value = getattr(s, name)
        if value is None and optional:
            continue
        if integer:
            checks.integer(name, value)
        else:
            checks.number(name, value, finite=True)


def _check_counts(s: TrainingSettings) -> None:
    if s.batch_size < 1:
        raise NeuronLensError(f"batch_size must be >= 1, got {s.batch_size}")
    if s.max_steps is not None and s.max_steps < 1:
        raise NeuronLensError(f"max_steps must be >= 1 (or None: use epochs), got {s.max_steps}")
    if s.max_steps is None and not s.epochs > 0:
        raise NeuronLensError(f"epochs must be > 0 (or give max_steps), got {s.epochs}")
    if s.eval_every is not None and s.eval_every < 1:
        raise NeuronLensError(
            f"eval_every must be >= 1 steps (or None: 4 times per epoch), got {s.eval_every}"
        )
    if s.patience < 1:
        raise NeuronLensError(f"patience must be >= 1 validation, got {s.patience}")
    if s.min_steps < 0:
        raise NeuronLensError(f"min_steps must be >= 0, got {s.min_steps}")
    if s.converge_window is not None and (
        isinstance(s.converge_window, bool)
        or not isinstance(s.converge_window, int)
        or s.converge_window < 1
    ):
        raise NeuronLensError(
            f"converge_window must be a number of steps >= 1 (or None), got {s.converge_window!r}"
        )
    if not 0 <= s.converge_tol < 1:
        raise NeuronLensError(f"converge_tol must be within [0, 1), got {s.converge_tol!r}")
    if s.warmup_steps < 0:
        raise NeuronLensError(f"warmup_steps must be >= 0, got {s.warmup_steps}")
    for name in ("max_length", "val_limit"):
        value = getattr(s, name)
        if value is not None and value < 1:
            raise NeuronLensError(f"{name} must be >= 1 (or None: no limit), got {value}")


def training_splits(task, train, validation, data_dir, val_limit):
    """``(task, train, validation)`` with the defaults of :func:`tune_prompt`: the task's
    train split, and a seeded ``val_limit`` subset of its validation split (``None`` when
    ``validation is False`` or the task has none)."""
    if isinstance(task, str):
        task = get_task(task)
    if train is not None:
        train = checks.split("train", train)
    if validation is not None and validation is not False:
        validation = checks.split("validation (or False: no validation)", validation)
    train = train if train is not None else task.load("train", data_dir=data_dir)
    if validation is False:  # explicitly none: fixed number of steps, no early stopping
        validation = None
    elif validation is None and "validation" in task.splits:
        validation = task.load("validation", data_dir=data_dir)
        if val_limit is not None:
            validation = validation.subset(val_limit, seed=0)
    if len(train) == 0:
        raise EmptyDataError(f"task {task.name!r}: the training split is empty")
    if validation is not None and len(validation) == 0:
        raise EmptyDataError(f"task {task.name!r}: the validation split is empty")
    return task, train, validation


def lr_factor(step: int, total: int, *, schedule: str = "constant", warmup_steps: int = 0) -> float:
    """Learning-rate multiplier for optimizer step ``step`` (0-based) of ``total``.

    Unlike ``transformers.get_linear_schedule_with_warmup`` the warm-up's first step already
    trains (factor ``1 / warmup_steps``, not 0)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "linear":
        return max(0.0, (total - step) / max(1, total - warmup_steps))
    return 1.0


class _Trainer:
    """One prompt-tuning run: the trainable prompt (after any fixed rows), the head, the
    optimizer, the moving average, and the best validated state."""

    def __init__(
        self, model, head: Head, start: Tensor, settings: TrainingSettings, n_train,
        weights: Sequence[torch.nn.Parameter] = (), weights_lr: float = 0.0, make=None,
    ):  # fmt: skip
        self.model, self.head, self.s = model, head, settings
        self.fixed = head.fixed_rows(model).to(start) if make is None else start[:0]
        self.prompt = torch.nn.Parameter(start[len(self.fixed) :].clone())
        self.make = make  # trainable tensor -> what the model sees (a reparameterisation)
        self.weights = list(weights)  # the model's own weights, when fine-tuning
        groups = [{"params": [self.prompt], "lr": settings.lr}] if self.prompt.shape[0] else []
        head_params = [p for p in head.parameters() if p.requires_grad]
        if head_params:
            groups.append({"params": head_params, "lr": settings.head_lr})
        if self.weights:
            if settings.ema_decay is not None:
                raise NeuronLensError(
                    "ema_decay averages soft prompts and heads, not a fine-tuned model or a "
                    "reparameterisation (prefix tuning, P-tuning)"
                )
            groups.append({"params": self.weights, "lr": weights_lr})
        if not groups:
            raise NeuronLensError(
                "nothing to train: n_tokens=0 trains only a linear head (a frozen linear "
                "probe); with a verbalizer use n_tokens >= 1"
            )
        self.opt = torch.optim.AdamW(groups, weight_decay=settings.weight_decay)
        steps_per_epoch = math.ceil(n_train / settings.batch_size)
        self.total = settings.max_steps or max(1, round(settings.epochs * steps_per_epoch))
        self.eval_every = settings.eval_every or max(1, steps_per_epoch // 4)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt,
            lambda i: lr_factor(
                i, self.total, schedule=settings.schedule, warmup_steps=settings.warmup_steps
            ),
        )
        # what is validated and returned: the trained weights, or their moving average
        ema = settings.ema_decay is not None
        self.avg_prompt = self.prompt.detach().clone() if ema else self.prompt
        self.avg_head = copy.deepcopy(head) if ema else head
        self.best_acc, self.best_state, self.bad, self.history, self.losses = -1.0, None, 0, [], []

    def whole(self, trainable: Tensor):
        """The prompt the model sees: the fixed rows, then the trained ones (or the
        reparameterisation's output)."""
        if self.make is not None:
            return self.make(trainable)
        return torch.cat([self.fixed, trainable]) if len(self.fixed) else trainable

    def step(self, step: int, enc, labels) -> None:
        logits = self.head.class_logits(self.model, enc, self.whole(self.prompt))
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        if not torch.isfinite(loss):
            raise NeuronLensError(
                f"the training loss became {float(loss)} at step {step}; lower lr"
            )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        if self.s.ema_decay is not None:
            with torch.no_grad():
                weight = 1 - min(self.s.ema_decay, (1 + step) / (10 + step))
                trained = [self.prompt, *self.head.parameters()]
                averaged = [self.avg_prompt, *self.avg_head.parameters()]
                for avg, now in zip(averaged, trained, strict=True):
                    avg.lerp_(now, weight)
        self.losses.append(loss.item())

    def validate(self, step: int, enc_val, val_labels: Tensor) -> bool:
        """Validate; keep the best state; whether training should stop (patience)."""
        prompt = self.whole(self.avg_prompt.detach())
        pred = class_logits(self.model, self.avg_head, prompt, enc_val).argmax(-1).cpu()
        acc = float((pred == val_labels).float().mean())
        self.history.append({"step": step, "train_loss": self.recent_loss(), "val_accuracy": acc})
        if acc > self.best_acc:
            self.best_acc, self.bad = acc, 0
            self.best_state = (
                self.avg_prompt.detach().clone(),
                {k: v.clone() for k, v in self.avg_head.state_dict().items()},
                [w.detach().clone() for w in self.weights],
            )
            return False
        self.bad += 1
        return self.bad >= self.s.patience and step >= self.s.min_steps

    def converged(self, step: int) -> bool:
        """Whether the training loss has converged (``converge_window``); recorded in the
        history when it has."""
        w = self.s.converge_window
        if w is None or len(self.losses) < 2 * w or step < self.s.min_steps:
            return False
        before = sum(self.losses[-2 * w : -w]) / w
        now = sum(self.losses[-w:]) / w
        if before - now >= self.s.converge_tol * abs(before):
            return False
        self.history.append(
            {"step": step, "train_loss": now, "val_accuracy": None,
             "converged": {"window_before": before, "window_now": now}}
        )  # fmt: skip
        return True

    def recent_loss(self) -> float:
        last = self.losses[-self.eval_every :]
        return sum(last) / len(last)

    def run(self, enc_train, labels, enc_val, val_labels, seed: int, name: str, show: bool):
        """Train for ``total`` steps over shuffled batches (seeded), validating every
        ``eval_every`` steps and at the end; stop early when :meth:`validate` says so."""
        s = self.s
        gen = torch.Generator().manual_seed(seed)
        order, cursor = torch.randperm(len(labels), generator=gen), 0
        bar = tqdm(total=self.total, desc=f"prompt tuning {name}", disable=not show, leave=False)
        try:
            for step in range(1, self.total + 1):
                if cursor >= len(order):
                    order, cursor = torch.randperm(len(labels), generator=gen), 0
                rows = order[cursor : cursor + s.batch_size].to(labels.device)
                cursor += s.batch_size
                self.step(step, enc_train[rows], labels[rows])
                bar.update(1)
                bar.set_postfix(loss=f"{self.losses[-1]:.3f}")
                due = enc_val is not None and (step % self.eval_every == 0 or step == self.total)
                if due and self.validate(step, enc_val, val_labels):
                    break
                if self.converged(step):
                    if enc_val is not None and not due:
                        self.validate(step, enc_val, val_labels)
                    break
        finally:
            bar.close()

    def finish(self) -> tuple[Tensor, float | None]:
        """Load the best validated state (without validation: the final average, or the
        weights as they are); return the whole prompt and the best validation accuracy."""
        ema = self.s.ema_decay is not None
        keep = self.best_state or ((self.avg_prompt, self.avg_head.state_dict()) if ema else None)
        if keep is not None:
            with torch.no_grad():
                self.prompt.copy_(keep[0])
                for w, best in zip(self.weights, keep[2] if len(keep) > 2 else (), strict=False):
                    w.copy_(best)
            self.head.load_state_dict(keep[1])
        for w in self.weights:
            w.requires_grad_(False)
        if not self.history:
            self.history.append(
                {"step": self.total, "train_loss": self.recent_loss(), "val_accuracy": None}
            )
        self.head.requires_grad_(False)
        best = None if self.best_state is None else self.best_acc
        with torch.no_grad():
            return self.whole(self.prompt.detach()), best


def _start_prompt(model, hd: Head, init, n_tokens: int, seed: int) -> Tensor:
    """The prompt training starts from, checked against the model and the head's readout."""
    start = init.detach().clone() if init is not None else init_prompt(model, n_tokens, seed=seed)
    if start.dim() != 2 or start.shape[1] != model.d_model:
        raise ShapeMismatchError(
            f"init prompt must be [n_tokens, {model.d_model}], got {list(start.shape)}"
        )
    n_fixed = len(hd.fixed_rows(model))
    if hd.readout == "prompt" and start.shape[0] == 0:
        raise NeuronLensError(
            "readout 'prompt' reads the answer at a soft-prompt position: n_tokens must be >= 1"
        )
    if n_fixed and start.shape[0] <= n_fixed:
        raise NeuronLensError(
            f"readout {hd.readout!r} puts {n_fixed} fixed token(s) at the start of the "
            f"prompt: n_tokens must be at least {n_fixed + 1}, got {start.shape[0]}"
        )
    return start.to(model.device, MASTER_DTYPE)  # float32 master weights, any model dtype


def tune_prompt(
    model: NeuronModel,
    task,
    *,
    train=None,
    validation=None,
    head: str | Head = "auto",
    readout: str = "auto",
    n_tokens: int = DEFAULT_TOKENS,
    init: Tensor | Prefix | None = None,
    method: str = "prompt",
    encoder_hidden: int | None = None,
    seed: int = 0,
    settings: TrainingSettings | None = None,
    data_dir=None,
    progress: bool | None = None,
    **training,
) -> PromptResult:
    """Tune a soft prompt (and a linear head) for ``task`` on a frozen ``model``.

    Args:
        task: a :class:`~neuronlens.tasks.Task` (or a registered task name).
        train, validation: task splits; default ``task.load("train")`` and a seeded subset
            of ``val_limit`` examples of ``task.load("validation")`` (from ``data_dir`` /
            ``$NEURONLENS_DATA_DIR``); ``validation=False``: no validation, no early stopping.
        head: ``"auto"`` (verbalizer if the model has a trained LM head, else linear),
            ``"verbalizer"``, ``"linear"`` or a :class:`Head`, used as it is: its parameters
            train only where they require grad (``head=probe.head.trainable_copy()`` trains
            a head that starts from a fitted probe).
        readout: where the head reads the answer (:mod:`neuronlens.prompts.heads`):
            ``"prompt"`` (at a soft-prompt position, as the original skill-neuron code does;
            on a masked LM prompt position 0 is then the mask token's embedding and is not
            trained; on a causal LM the prompt follows the input), ``"mask"``, ``"last"``,
            ``"pool"``, or ``"auto"`` (``"prompt"`` on causal LMs and T5). The result records
            it, and every later call reads the answer there.
        n_tokens: prompt length ``p`` (100 in the robustness paper, 20 for SKELETON / SKIP);
            0 with a linear head trains the head alone.
        init: start from this prompt (``[p, d_model]``, or a prefix), e.g. to re-train
            after pruning.
        method: ``"prompt"`` (prompt tuning), ``"p-tuning"`` (Liu et al. 2021: the prompt
            is the output of a BiLSTM + MLP encoder during training, an ordinary soft prompt
            after it) or ``"prefix"`` (Li & Liang 2021: ``n_tokens`` extra keys and values in
            every attention layer, trained through an MLP of width ``encoder_hidden``, 512 by
            default; BERT, RoBERTa, GPT-2, Llama). A prefix adds no sequence positions, so
            its answer is read at the mask, the last token or the pooled input, and
            predictivity reads there (:class:`~neuronlens.capture.AnswerToken`,
            :class:`~neuronlens.capture.Pooled`).
        encoder_hidden: the reparameterisation's width (P-tuning, prefix tuning).
        seed: initialisation and batch order (same seed, same prompt, bit for bit, at the
            same thread count).
        settings, training: a :class:`TrainingSettings`, and any of its fields as keywords
            (``epochs=2, lr=3e-2, ...``), which override it.

    Examples:
        >>> tuned = tune_prompt(model, task, n_tokens=20, epochs=2, seed=0)  # doctest: +SKIP
        >>> tuned.head.readout, tuned.val_accuracy                          # doctest: +SKIP
    """
    if method not in METHODS:
        raise NeuronLensError(f"method must be one of {METHODS}, got {method!r}")
    s = TrainingSettings.of(settings, **training)
    if s.lr is None:
        s = replace(s, lr=DEFAULT_LR[method])
    task, train, validation = training_splits(task, train, validation, data_dir, s.val_limit)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # head and encoder initialisation
        hd = make_head(model, head, task, _readout(method, model, head, readout)).to(model.device)
        if method == "prefix":
            start, make, weights = _prefix_setup(model, init, n_tokens, seed, encoder_hidden)
        else:
            start = _start_prompt(model, hd, init, n_tokens, seed)
            make, weights = None, ()
            if method == "p-tuning":
                make, weights = _p_tuning_setup(model, hd, start, encoder_hidden)
                start = start[len(hd.fixed_rows(model)) :]
    return run_training(model, task, hd, start, s, train, validation, seed=seed, progress=progress,
                        weights=weights, weights_lr=s.lr, make=make, method=method)  # fmt: skip


METHODS = ("prompt", "p-tuning", "prefix")
#: the learning rate each method trains with when ``lr`` is not given
DEFAULT_LR = {"prompt": 3e-2, "p-tuning": 3e-2, "prefix": 1e-3}


def _readout(method: str, model, head, readout: str) -> str:
    if method != "prefix":
        return readout
    if readout == "prompt":
        raise NeuronLensError(
            "a prefix adds keys and values, no sequence positions, so there is no soft-prompt "
            "position to read the answer at: use readout='mask', 'last' or 'pool'"
        )
    return promptless_readout(model, head, readout)  # keys and values only: no prompt


def _prefix_setup(model, init, n_tokens: int, seed: int, hidden: int | None):
    """``(trainable start, make, weights)``: from scratch, embeddings through a
    :class:`PrefixEncoder`; from a given prefix (re-training), the prefix itself."""
    if model.kind.value == "encoder_decoder":
        raise NeuronLensError(f"{model.name}: {T5_REASON}")
    if isinstance(init, Prefix):
        prefix_cache(init, model.hf_model.config, 1)  # checks its shape against the model
        return init.kv.detach().clone().to(model.device, MASTER_DTYPE), Prefix, ()
    if init is not None:
        raise NeuronLensError("init for prefix tuning is a Prefix (e.g. a tuned result's prompt)")
    checks.integer("n_tokens", n_tokens, minimum=1)
    encoder = PrefixEncoder(model.d_model, model.hf_model.config, hidden or 512)
    start = init_prompt(model, n_tokens, seed=seed)
    return start, encoder, encoder_params(encoder, MASTER_DTYPE, model.device)


def _p_tuning_setup(model, hd: Head, start: Tensor, hidden: int | None):
    """``(make, weights)``: the trained rows through a :class:`PromptEncoder`, after the
    head's fixed rows."""
    fixed = hd.fixed_rows(model).to(start)
    encoder = PromptEncoder(model.d_model, hidden)
    weights = encoder_params(encoder, MASTER_DTYPE, model.device)

    def make(trainable: Tensor) -> Tensor:
        return torch.cat([fixed, encoder(trainable)]) if len(fixed) else encoder(trainable)

    return make, weights


def run_training(
    model, task, hd: Head, start: Tensor, s: TrainingSettings, train, validation, *,
    seed: int, progress: bool | None, weights=(), weights_lr: float = 0.0, make=None,
    method: str = "prompt",
) -> PromptResult:  # fmt: skip
    """Train ``start`` (a prompt), ``hd`` and any model ``weights`` on ``train`` with early
    stopping on ``validation``; the :class:`PromptResult` of the best validated state."""
    if hd.n_classes != task.num_labels:
        raise ShapeMismatchError(
            f"head has {hd.n_classes} classes, task {task.name!r} has {task.num_labels}"
        )
    trainer = _Trainer(model, hd, start, s, len(train), weights, weights_lr, make)
    enc_train = encode_task(model, hd, task, train, max_length=s.max_length)
    labels = torch.tensor(train.labels, device=model.device)
    enc_val = (
        None
        if validation is None
        else encode_task(model, hd, task, validation, max_length=s.max_length)
    )
    val_labels = None if validation is None else torch.tensor(validation.labels)
    show = progress if progress is not None else trainer.total >= 20
    trainer.run(enc_train, labels, enc_val, val_labels, seed, f"{task.name} (seed {seed})", show)
    prompt, best = trainer.finish()
    return PromptResult(
        prompt=prompt,
        head=hd,
        task=task.name,
        label_space=task.label_space,
        label_names=tuple(task.label_names),
        seed=seed,
        model_name=model.name,
        model_kind=model.kind.value,
        model_dtype=dtype_name(model.dtype),
        val_accuracy=best,
        history=trainer.history,
        train_size=len(train),
        method=method,
    )


def tune_prompts(
    model: NeuronModel, task, seeds: Sequence[int] = (0, 1, 2, 3, 4), **kwargs
) -> list[PromptResult]:
    """:func:`tune_prompt` once per seed (the robustness paper uses 5 seeds per task)."""
    if not seeds:
        raise NeuronLensError("tune_prompts needs at least one seed")
    return [tune_prompt(model, task, seed=s, **kwargs) for s in seeds]
