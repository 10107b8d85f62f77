"""Prompt tuning on a frozen model (Lester et al. 2021).

A soft prompt is ``p`` trainable vectors in embedding space, placed before the input (or
after it, where the head's ``readout`` says). Only the prompt (and a linear head, when the
model answers through one) gets gradients; the model's weights stay bit for bit unchanged.
Training uses AdamW, shuffled batches from a seeded generator, validation-based early
stopping (the best prompt is kept), and a progress bar.

    tuned = tune_prompt(model, get_task("sst2"), n_tokens=20, epochs=1, seed=0)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from neuronlens.errors import EmptyDataError, NeuronLensError, ShapeMismatchError
from neuronlens.models.model import NeuronModel
from neuronlens.prompts.heads import Head, class_logits, encode_task, make_head
from neuronlens.prompts.results import DEFAULT_TOKENS, PromptResult, init_prompt
from neuronlens.tasks import get_task

# ---------------------------------------------------------------------------- training


def training_splits(task, train, validation, data_dir, val_limit):
    """``(task, train, validation)`` with the defaults of :func:`tune_prompt`: the task's
    train split, and a seeded ``val_limit`` subset of its validation split (``None`` when
    ``validation is False`` or the task has none)."""
    if isinstance(task, str):
        task = get_task(task)
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


def _check_training_settings(
    *,
    batch_size,
    epochs,
    max_steps,
    eval_every,
    patience,
    min_steps,
    lr,
    head_lr,
    schedule,
    warmup_steps,
    ema_decay,
):
    """Reject settings that would divide by zero, train nothing, climb the loss, or that
    name no schedule or moving average (before any data is loaded)."""
    if batch_size < 1:
        raise NeuronLensError(f"batch_size must be >= 1, got {batch_size}")
    if max_steps is not None and max_steps < 1:
        raise NeuronLensError(f"max_steps must be >= 1 (or None: use epochs), got {max_steps}")
    if max_steps is None and not epochs > 0:
        raise NeuronLensError(f"epochs must be > 0 (or give max_steps), got {epochs}")
    if eval_every is not None and eval_every < 1:
        raise NeuronLensError(
            f"eval_every must be >= 1 steps (or None: 4 times per epoch), got {eval_every}"
        )
    if patience < 1:
        raise NeuronLensError(f"patience must be >= 1 validation, got {patience}")
    if min_steps < 0:
        raise NeuronLensError(f"min_steps must be >= 0, got {min_steps}")
    for name, value in (("lr", lr), ("head_lr", head_lr)):
        if not value >= 0:
            raise NeuronLensError(f"{name} must be >= 0 (a learning rate), got {value}")
    if schedule not in ("constant", "linear"):
        raise NeuronLensError(f"schedule must be 'constant' or 'linear', got {schedule!r}")
    if warmup_steps < 0:
        raise NeuronLensError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if ema_decay is not None and (
        isinstance(ema_decay, bool)
        or not isinstance(ema_decay, (int, float))
        or not 0 < ema_decay < 1
    ):
        raise NeuronLensError(
            f"ema_decay must be None or a number in (0, 1), e.g. 0.998; got {ema_decay!r}"
        )


def tune_prompt(
    model: NeuronModel,
    task,
    *,
    train=None,
    validation=None,
    head: str | Head = "auto",
    readout: str = "auto",
    n_tokens: int = DEFAULT_TOKENS,
    init: Tensor | None = None,
    epochs: float = 1.0,
    max_steps: int | None = None,
    batch_size: int = 16,
    lr: float = 3e-2,
    head_lr: float = 1e-3,
    weight_decay: float = 1e-5,
    schedule: str = "constant",
    warmup_steps: int = 0,
    ema_decay: float | None = None,
    eval_every: int | None = None,
    patience: int = 3,
    min_steps: int = 0,
    seed: int = 0,
    max_length: int | None = 128,
    data_dir=None,
    val_limit: int | None = 500,
    progress: bool | None = None,
) -> PromptResult:
    """Tune a soft prompt (and a linear head) for ``task`` on a frozen ``model``.

    Args:
        task: a :class:`~neuronlens.tasks.Task` (or a registered task name).
        train, validation: task splits; default ``task.load("train")`` and a seeded subset
            of ``val_limit`` examples of ``task.load("validation")`` (from ``data_dir`` /
            ``$NEURONLENS_DATA_DIR``); ``validation=False``: no validation, no early stopping.
            (SST-2's held-out rows are mostly phrases of training sentences; pass
            ``sentence_disjoint_split(...)`` splits for validation that tracks GLUE dev.)
        head: ``"auto"`` (verbalizer if the model has a trained LM head, else linear),
            ``"verbalizer"``, ``"linear"`` or a :class:`Head`. A given head is used as it is:
            its parameters train only where they require grad, and the heads of tuned results
            are frozen, so ``head=probe.head`` (``probe`` from :func:`fit_linear_probe`)
            tunes a prompt against a fixed, already fitted linear probe, and
            ``head=probe.head.trainable_copy()`` trains the prompt and a head started from
            the probe (on MiniLM / SST-2, GLUE dev: 81.3 % and 82.5 % for seeds 0 and 1,
            the probe alone 79.6 %, validated on sentences split off by
            :func:`~neuronlens.tasks.sentence_disjoint_split`).
        readout: where the head reads the answer (:mod:`neuronlens.prompts.heads`):
            ``"prompt"`` (at a soft-prompt position, as the original skill-neuron code does;
            on a masked LM prompt position 0 is then the mask token's embedding and is not
            trained; on a causal LM the prompt follows the input), ``"mask"``, ``"last"``,
            ``"pool"``, or ``"auto"`` (``"prompt"`` on causal LMs and T5). The result records
            it, and every later call reads the answer there.
        n_tokens: prompt length ``p`` (100 in the robustness paper, 20 for SKELETON / SKIP);
            0 with a linear head trains the head alone by AdamW (:func:`fit_linear_probe`
            fits that baseline to the optimum).
        init: start from this prompt (``[p, d_model]``) instead of vocabulary embeddings,
            e.g. to re-train a prompt after pruning.
        epochs, max_steps: training length (``max_steps`` wins when both are given).
        lr, head_lr: AdamW learning rates of the prompt and of a linear head.
        schedule, warmup_steps: ``"constant"`` learning rates, or ``"linear"``: decay to 0 over
            the training steps; either after a linear warm-up of ``warmup_steps``.
        ema_decay: ``None`` validates and returns the trained weights themselves; a decay in
            (0, 1), e.g. 0.998, keeps an exponential moving average of the prompt and the
            trained head parameters (Polyak averaging, decay ``min(ema_decay, (1 + t) /
            (10 + t))`` at step ``t``) and validates and returns the average instead.
        eval_every: steps between validations (default: 4 times per epoch); early stopping
            after ``patience`` validations without improvement; the best prompt is returned.
        min_steps: no early stop before this step; validations up to it still pick the best
            prompt. On a small validation set whose score jumps while the learning rate is
            high, an early lucky best can otherwise end training before the decay.
        seed: initialisation and batch order (same seed, same prompt, bit for bit).
    """
    _check_training_settings(
        batch_size=batch_size,
        epochs=epochs,
        max_steps=max_steps,
        eval_every=eval_every,
        patience=patience,
        min_steps=min_steps,
        lr=lr,
        head_lr=head_lr,
        schedule=schedule,
        warmup_steps=warmup_steps,
        ema_decay=ema_decay,
    )
    task, train, validation = training_splits(task, train, validation, data_dir, val_limit)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # linear-head initialisation
        hd = make_head(model, head, task, readout).to(model.device)
    if hd.n_classes != task.num_labels:
        raise ShapeMismatchError(
            f"head has {hd.n_classes} classes, task {task.name!r} has {task.num_labels}"
        )
    start = init.detach().clone() if init is not None else init_prompt(model, n_tokens, seed=seed)
    if start.dim() != 2 or start.shape[1] != model.d_model:
        raise ShapeMismatchError(
            f"init prompt must be [n_tokens, {model.d_model}], got {list(start.shape)}"
        )
    start = start.to(model.device, model.dtype)
    # rows the prompt starts with that stay fixed (a masked LM's mask embedding, readout
    # "prompt"); only the rest trains
    fixed = hd.fixed_rows(model).to(start)
    if hd.readout == "prompt" and start.shape[0] == 0:
        raise NeuronLensError(
            "readout 'prompt' reads the answer at a soft-prompt position: n_tokens must be >= 1"
        )
    if len(fixed) and start.shape[0] <= len(fixed):
        raise NeuronLensError(
            f"readout {hd.readout!r} puts {len(fixed)} fixed token(s) at the start of the "
            f"prompt: n_tokens must be at least {len(fixed) + 1}, got {start.shape[0]}"
        )
    prompt = torch.nn.Parameter(start[len(fixed) :].clone())

    def whole(trainable: Tensor) -> Tensor:
        return torch.cat([fixed, trainable]) if len(fixed) else trainable

    groups = [{"params": [prompt], "lr": lr}] if prompt.shape[0] else []
    head_params = [p for p in hd.parameters() if p.requires_grad]
    if head_params:
        groups.append({"params": head_params, "lr": head_lr})
    if not groups:
        raise NeuronLensError(
            "nothing to train: n_tokens=0 trains only a linear head (a frozen linear probe); "
            "with a verbalizer use n_tokens >= 1"
        )
    opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
    # what is validated and returned: the trained weights, or their moving average
    avg_prompt, avg_head = (
        (prompt, hd) if ema_decay is None else (prompt.detach().clone(), copy.deepcopy(hd))
    )
    trained = [prompt, *hd.parameters()]
    averaged = [avg_prompt, *avg_head.parameters()]

    enc_train = encode_task(model, hd, task, train, max_length=max_length)
    labels = torch.tensor(train.labels, device=model.device)
    enc_val = (
        None
        if validation is None
        else encode_task(model, hd, task, validation, max_length=max_length)
    )
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total = max_steps if max_steps is not None else max(1, round(epochs * steps_per_epoch))
    eval_every = eval_every or max(1, steps_per_epoch // 4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: lr_factor(i, total, schedule=schedule, warmup_steps=warmup_steps)
    )

    def val_accuracy() -> float:
        logits = class_logits(model, avg_head, whole(avg_prompt.detach()), enc_val)
        return float((logits.argmax(-1).cpu() == torch.tensor(validation.labels)).float().mean())

    best_acc, best_state, bad, history, losses = -1.0, None, 0, [], []
    order = torch.randperm(len(train), generator=gen)
    cursor = 0
    bar = tqdm(
        total=total,
        desc=f"prompt tuning {task.name} (seed {seed})",
        disable=not (progress if progress is not None else total >= 20),
        leave=False,
    )
    try:
        for step in range(1, total + 1):
            if cursor >= len(order):
                order, cursor = torch.randperm(len(train), generator=gen), 0
            rows = order[cursor : cursor + batch_size].to(model.device)
            cursor += batch_size
            logits = hd.class_logits(model, enc_train[rows], whole(prompt))
            loss = torch.nn.functional.cross_entropy(logits.float(), labels[rows])
            if not torch.isfinite(loss):
                raise NeuronLensError(
                    f"the training loss became {float(loss)} at step {step}; lower lr"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema_decay is not None:
                with torch.no_grad():
                    weight = 1 - min(ema_decay, (1 + step) / (10 + step))
                    for avg, now in zip(averaged, trained, strict=True):
                        avg.lerp_(now, weight)
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if enc_val is not None and (step % eval_every == 0 or step == total):
                acc = val_accuracy()
                history.append(
                    {
                        "step": step,
                        "train_loss": sum(losses[-eval_every:]) / len(losses[-eval_every:]),
                        "val_accuracy": acc,
                    }
                )
                if acc > best_acc:
                    best_acc, bad = acc, 0
                    best_state = (
                        avg_prompt.detach().clone(),
                        {k: v.clone() for k, v in avg_head.state_dict().items()},
                    )
                else:
                    bad += 1
                    if bad >= patience and step >= min_steps:
                        break
    finally:
        bar.close()
    # the best validated state; without validation the final average (or weights as they are)
    keep = best_state or (None if ema_decay is None else (avg_prompt, avg_head.state_dict()))
    if keep is not None:
        with torch.no_grad():
            prompt.copy_(keep[0])
        hd.load_state_dict(keep[1])
    if not history:
        history.append(
            {
                "step": total,
                "train_loss": sum(losses[-eval_every:]) / len(losses[-eval_every:]),
                "val_accuracy": None,
            }
        )
    hd.requires_grad_(False)
    return PromptResult(
        prompt=whole(prompt.detach()),
        head=hd,
        task=task.name,
        label_space=task.label_space,
        label_names=tuple(task.label_names),
        seed=seed,
        model_name=model.name,
        model_kind=model.kind.value,
        val_accuracy=None if best_state is None else best_acc,
        history=history,
        train_size=len(train),
    )


def lr_factor(step: int, total: int, *, schedule: str = "constant", warmup_steps: int = 0) -> float:
    """Learning-rate multiplier for optimizer step ``step`` (0-based) of ``total``.

    Unlike ``transformers.get_linear_schedule_with_warmup`` the warm-up's first step already
    trains (factor ``1 / warmup_steps``, not 0)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "linear":
        return max(0.0, (total - step) / max(1, total - warmup_steps))
    return 1.0


def tune_prompts(
    model: NeuronModel, task, seeds: Sequence[int] = (0, 1, 2, 3, 4), **kwargs
) -> list[PromptResult]:
    """:func:`tune_prompt` once per seed (the robustness paper uses 5 seeds per task)."""
    if not seeds:
        raise NeuronLensError("tune_prompts needs at least one seed")
    return [tune_prompt(model, task, seed=s, **kwargs) for s in seeds]
