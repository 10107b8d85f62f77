"""A task's data in memory (:class:`TaskData`) and where data lives (the data directory)."""

from __future__ import annotations

import numbers
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from neuronlens.errors import (
    DataError,
    DataFileNotFoundError,
    EmptyDataError,
    ShapeMismatchError,
)

DATA_DIR_ENV = "NEURONLENS_DATA_DIR"
"""Environment variable naming the data directory (the folder holding ``sst2/``, ``mrpc/`` ...)."""


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory: ``data_dir`` if given, else ``$NEURONLENS_DATA_DIR``.

    Raises :class:`DataFileNotFoundError` when neither is set or the folder does not exist.
    """
    path, setting = configured_data_dir(data_dir)
    if path is None:
        raise DataFileNotFoundError(
            f"no data directory configured: pass data_dir= or set the {DATA_DIR_ENV} "
            "environment variable to the folder that holds the task files (sst2/, mrpc/, ...)"
        )
    if not path.is_dir():
        raise DataFileNotFoundError(
            f"data directory {path} (from {setting}) does not exist: point data_dir= or "
            f"{DATA_DIR_ENV} at the folder that holds the task files (sst2/, mrpc/, ...)"
        )
    return path


def configured_data_dir(data_dir: str | os.PathLike | None) -> tuple[Path | None, str]:
    """The data directory setting, unchecked, and where it came from (for messages)."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser(), "data_dir="
    env = os.environ.get(DATA_DIR_ENV, "")
    if env:
        return Path(env).expanduser(), DATA_DIR_ENV
    return None, "nothing"


@dataclass(frozen=True, repr=False)
class TaskData:
    """The examples of one split: texts (and second texts for pair tasks) with integer labels.

    ``labels[i]`` indexes ``label_names``. Lists are stored as tuples; the constructor checks
    that the split is not empty, that all sequences have the same length and that every label
    is in ``range(len(label_names))``.
    """

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    texts_b: tuple[str, ...] | None
    task: str
    split: str
    label_names: tuple[str, ...]

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "texts", tuple(self.texts))
        set_(self, "labels", tuple(self.labels))
        set_(self, "label_names", tuple(self.label_names))
        if self.texts_b is not None:
            set_(self, "texts_b", tuple(self.texts_b))
        where = f"task {self.task!r}, split {self.split!r}"
        if not self.label_names:
            raise DataError(f"{where}: label_names is empty")
        if not self.texts:
            raise EmptyDataError(f"{where} has no examples")
        if len(self.labels) != len(self.texts):
            raise ShapeMismatchError(
                f"{where}: {len(self.texts)} texts but {len(self.labels)} labels"
            )
        if self.texts_b is not None and len(self.texts_b) != len(self.texts):
            raise ShapeMismatchError(
                f"{where}: {len(self.texts)} texts but {len(self.texts_b)} second texts (texts_b)"
            )
        for name, texts in (("texts", self.texts), ("texts_b", self.texts_b or ())):
            for i, text in enumerate(texts):
                if not isinstance(text, str):
                    raise DataError(f"{where}: {name}[{i}] is {text!r}, not a string")
        n = len(self.label_names)
        for i, label in enumerate(self.labels):
            if isinstance(label, bool) or not isinstance(label, numbers.Integral):
                raise DataError(f"{where}: labels[{i}] is {label!r}, not an integer")
            if not 0 <= label < n:
                hint = " (-1 usually marks an unlabeled test split)" if label == -1 else ""
                raise DataError(
                    f"{where}: label {label} (labels[{i}]) is not in range({n}); "
                    f"label names are {list(self.label_names)}{hint}"
                )
        set_(self, "labels", tuple(int(label) for label in self.labels))

    def __len__(self) -> int:
        return len(self.texts)

    def __repr__(self) -> str:
        return (
            f"TaskData(task={self.task!r}, split={self.split!r}, n={len(self)}, "
            f"pair={self.texts_b is not None}, label_counts={self.label_counts()})"
        )

    @property
    def is_binary(self) -> bool:
        """Whether the task has exactly two classes."""
        return len(self.label_names) == 2

    def label_counts(self) -> dict[int, int]:
        """Examples per label, for every label of the task (0 for absent ones)."""
        counts = dict.fromkeys(range(len(self.label_names)), 0)
        for label in self.labels:
            counts[label] += 1
        return counts

    def take(self, n: int) -> TaskData:
        """The first ``n`` examples (all of them when ``n >= len(self)``)."""
        check_count(n)
        return self._select(range(min(n, len(self))))

    def subset(self, n: int, seed: int = 0) -> TaskData:
        """``n`` examples drawn without replacement, the same ones for the same seed.

        The examples keep their original order; ``n >= len(self)`` returns all of them.
        """
        check_count(n)
        if n >= len(self):
            return self
        return self._select(sorted(random.Random(seed).sample(range(len(self)), n)))

    def split_off(self, n: int, seed: int = 0) -> tuple[TaskData, TaskData]:
        """``(rest, part)``: ``part`` is :meth:`subset` ``(n, seed)``, ``rest`` every other
        example; no example is in both (a split divided into train and eval)."""
        check_count(n)
        if not 0 < n < len(self):
            raise DataError(
                f"cannot split {n} of {len(self)} examples off {self.task}/{self.split}: "
                "keep at least one on each side"
            )
        chosen = set(random.Random(seed).sample(range(len(self)), n))
        rest = [i for i in range(len(self)) if i not in chosen]
        return self._select(rest), self._select(sorted(chosen))

    def where(self, keep) -> TaskData:
        """The examples for which ``keep(text, text_b, label)`` is true (order kept)."""
        texts_b = self.texts_b or (None,) * len(self)
        rows = [
            i
            for i, (a, b, y) in enumerate(zip(self.texts, texts_b, self.labels, strict=True))
            if keep(a, b, y)
        ]
        return self._select(rows)

    def _select(self, indices: Sequence[int]) -> TaskData:
        return TaskData(
            texts=tuple(self.texts[i] for i in indices),
            labels=tuple(self.labels[i] for i in indices),
            texts_b=None if self.texts_b is None else tuple(self.texts_b[i] for i in indices),
            task=self.task,
            split=self.split,
            label_names=self.label_names,
        )


def check_count(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise DataError(f"the number of examples must be an integer >= 0, got {n!r}")
