"""Argument checks shared by the public calls: a wrong value is a :class:`NeuronLensError`
that names the argument and says what it takes, never a TypeError from deep inside."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

from neuronlens.errors import DataError, EmptyDataError, NeuronLensError, NonFiniteValueError


def integer(name: str, value, *, minimum: int | None = None) -> int:
    """``value`` as an int (not a bool, not a float), at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise NeuronLensError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise NeuronLensError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def number(
    name: str, value, *, low: float | None = None, high: float | None = None, finite: bool = False
) -> float:
    """``value`` as a float (not a bool), within ``[low, high]``; ``finite``: not inf either."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:
        raise NeuronLensError(f"{name} must be a number, got {value!r}")
    if finite and not math.isfinite(value):
        raise NeuronLensError(f"{name} must be a finite number, got {value}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise NeuronLensError(f"{name} must be within {low}..{high}, got {value}")
    return float(value)


def instance(name: str, value, kind: type, hint: str):
    """``value`` itself when it is a ``kind``; else an error that says what to pass."""
    if not isinstance(value, kind):
        raise NeuronLensError(f"{name} must be {hint}, got {type(value).__name__} {value!r}")
    return value


def finite_tensor(
    name: str, value: Tensor, *, hint: str = "", error: type = NonFiniteValueError
) -> Tensor:
    """``value`` itself when every element is finite; else an ``error`` (a
    :class:`NonFiniteValueError`) that says how many are NaN and how many infinite (``hint``:
    what to check)."""
    ok = torch.isfinite(value)
    if bool(ok.all()):
        return value
    n_bad, n_nan = int((~ok).sum()), int(torch.isnan(value).sum())
    raise error(
        f"{name}: {n_bad} of {value.numel()} values are not finite ({n_nan} NaN, "
        f"{n_bad - n_nan} infinite)" + (f"; {hint}" if hint else "")
    )


_SPLIT = (
    "a task split: task.load('dev'), a neuronlens.tasks.TaskData, or a split of your own task, "
    "Task.from_lists(name, texts, labels, label_names=...).load('train')"
)


@dataclass(frozen=True)
class Texts:
    """Unlabelled single texts standing in for a split where only the texts are read (the
    baselines of predictivity); as a split: ``texts``, ``texts_b = None``, ``len``."""

    texts: tuple[str, ...]
    texts_b: None = None
    task: None = None
    split: None = None

    def __len__(self) -> int:
        return len(self.texts)


def split(name: str, value, *, needs_labels: bool = True):
    """``value`` itself when it is a task split with examples (texts, and labels when
    ``needs_labels``); with ``needs_labels=False`` a list of strings is taken too, as
    :class:`Texts`. Anything else (None, a string, a task, texts where labels are needed) is
    a :class:`DataError` that says what to pass; an empty one an :class:`EmptyDataError`."""
    texts = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
    if texts and len(value) == 0:
        raise EmptyDataError(f"{name} is empty: pass {_SPLIT}")
    if texts and not needs_labels:
        return Texts(tuple(value))
    if texts:
        raise DataError(
            f"{name} must be {_SPLIT}; got a list of {len(value)} strings, texts without labels"
        )
    if not hasattr(value, "texts") or (needs_labels and not hasattr(value, "labels")):
        raise DataError(f"{name} must be {_SPLIT}; got {_describe(value)}")
    if len(value) == 0:
        raise EmptyDataError(f"{name} has no examples: pass {_SPLIT}")
    return value


def _describe(value) -> str:
    if value is None:
        return "None"
    if isinstance(value, str):
        return f"the string {value!r} (load the split first: task.load({value!r}))"
    if hasattr(value, "load") and hasattr(value, "splits"):
        return f"the task {getattr(value, 'name', '')!r} itself (pass one of its splits)"
    return f"{type(value).__name__} {value!r:.80}"
