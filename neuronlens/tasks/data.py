"""Classification tasks: their labels, prompt template, verbalizer and where each split lives.

A :class:`Task` fixes the integer order of its labels once (``label_names[i]`` is label
``i``), whatever the data source says: local files, the Hugging Face hub and in-memory lists
are all mapped to those integers. :meth:`Task.load` returns an immutable :class:`TaskData`.

Each split of a task is a :class:`Split` with up to three sources:

- ``local``: a :class:`LocalFile` (.csv, .tsv, .jsonl, .json) under the data directory
  (``data_dir=`` or the ``NEURONLENS_DATA_DIR`` environment variable), or at an absolute path;
- ``hub``: a :class:`HubSource`, read with ``datasets.load_dataset`` (needs a network or the
  Hugging Face cache);
- ``data``: a :class:`TaskData` already in memory (custom and synthetic tasks).
"""

from __future__ import annotations

import csv
import json
import numbers
import os
import random
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from neuronlens.errors import (
    DataError,
    DataFileNotFoundError,
    EmptyDataError,
    ShapeMismatchError,
)

DATA_DIR_ENV = "NEURONLENS_DATA_DIR"
"""Environment variable naming the data directory (the folder holding ``sst2/``, ``mrpc/`` ...)."""

SOURCES = ("auto", "local", "hub")
FILE_FORMATS = (".csv", ".tsv", ".jsonl", ".json")
TEMPLATE_FIELDS = ("text", "text_b", "mask")
SINGLE_TEMPLATE = "{text} It was {mask}."
PAIR_TEMPLATE = "{text} ? {mask} , {text_b}"

Column = str | int
"""A column name, or a 0-based position for files without a header row."""


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory: ``data_dir`` if given, else ``$NEURONLENS_DATA_DIR``.

    Raises :class:`DataFileNotFoundError` when neither is set or the folder does not exist.
    """
    path, setting = _configured_data_dir(data_dir)
    if path is None:
        raise DataFileNotFoundError(
            f"no data directory configured: pass data_dir= or set the {DATA_DIR_ENV} "
            "environment variable to the folder that holds the task files (sst2/, mrpc/, ...)"
        )
    if not path.is_dir():
        raise DataFileNotFoundError(f"data directory {path} (from {setting}) does not exist")
    return path


def _configured_data_dir(data_dir: str | os.PathLike | None) -> tuple[Path | None, str]:
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
        _check_count(n)
        return self._select(range(min(n, len(self))))

    def subset(self, n: int, seed: int = 0) -> TaskData:
        """``n`` examples drawn without replacement, the same ones for the same seed.

        The examples keep their original order; ``n >= len(self)`` returns all of them.
        """
        _check_count(n)
        if n >= len(self):
            return self
        return self._select(sorted(random.Random(seed).sample(range(len(self)), n)))

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


def _check_count(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise DataError(f"the number of examples must be an integer >= 0, got {n!r}")


@dataclass(frozen=True)
class LocalFile:
    """A split stored as a .csv, .tsv, .jsonl or .json file.

    Args:
        path: relative to the data directory, or absolute.
        text_column, label_column, text_b_column: column names, or 0-based positions when
            ``header`` is False.
        header: whether the first row of a .csv/.tsv names the columns.
        quotes: whether fields may be wrapped in double quotes with CSV rules. Defaults to
            True for .csv and False for .tsv (GLUE's .tsv files hold bare quote characters).
        json_key: for a .json file whose top level is an object, the key holding the list of
            records (AdvGLUE's ``dev.json`` has one list per task).
        label_map: raw label value -> label integer, for files that number labels differently
            from the task. Without it, integers (or digit strings) are taken as they are and
            other strings are looked up in the task's ``label_names``.
    """

    path: str
    text_column: Column
    label_column: Column
    text_b_column: Column | None = None
    header: bool = True
    quotes: bool | None = None
    json_key: str | None = None
    label_map: Mapping[Any, int] | None = None

    def resolve(self, data_dir: Path | None) -> Path:
        """The file's full path (``data_dir`` is only needed for a relative path)."""
        path = Path(self.path).expanduser()
        if path.is_absolute():
            return path
        if data_dir is None:
            raise DataFileNotFoundError(
                f"{self.path} is relative to the data directory, and none is configured: "
                f"pass data_dir= or set {DATA_DIR_ENV}"
            )
        return data_dir / path

    def read(self, path: Path, limit: int | None = None) -> _RawSplit:
        """Read the split's columns from ``path`` (at most ``limit`` rows)."""
        columns, records = _read_records(
            path, header=self.header, quotes=self.quotes, json_key=self.json_key, limit=limit
        )
        if not records:
            raise EmptyDataError(f"{path} has no rows")
        return _RawSplit(
            texts=_column(records, columns, self.text_column, path),
            labels=_column(records, columns, self.label_column, path),
            texts_b=None
            if self.text_b_column is None
            else _column(records, columns, self.text_b_column, path),
        )


@dataclass(frozen=True)
class HoldOut:
    """A seeded split of a hub split into ``size`` held-out rows and the rest.

    ``part="holdout"`` keeps the ``size`` rows, ``part="rest"`` the others; both keep the
    original order. Used where the hub has no split matching a local file (SST-2's held-out
    validation rows, AG News's dev rows).
    """

    size: int
    part: Literal["holdout", "rest"]
    seed: int = 0

    def indices(self, n: int) -> list[int]:
        """The row indices of this part, out of ``n`` rows."""
        if n <= self.size:
            raise DataError(f"cannot hold out {self.size} rows from a split of {n}")
        order = list(range(n))
        random.Random(self.seed).shuffle(order)
        return sorted(order[: self.size] if self.part == "holdout" else order[self.size :])


@dataclass(frozen=True)
class HubSource:
    """A split on the Hugging Face hub, read with ``datasets.load_dataset(path, config)``.

    ``label_map`` maps the hub's label values to the task's integers where they differ.
    """

    path: str
    config: str | None
    split: str
    text_column: str
    label_column: str
    text_b_column: str | None = None
    label_map: Mapping[Any, int] | None = None
    hold_out: HoldOut | None = None
    revision: str | None = None

    def describe(self) -> str:
        """``path (config, split)`` for messages."""
        config = f"config {self.config!r}, " if self.config else ""
        return f"{self.path} ({config}split {self.split!r})"

    def read(self, limit: int | None = None) -> _RawSplit:
        """Download (or read from the cache) the split's columns."""
        import datasets

        try:
            ds = datasets.load_dataset(
                self.path, self.config, split=self.split, revision=self.revision
            )
        except Exception as exc:  # network, auth, missing repo, script-based repo ...
            raise DataError(
                f"could not load {self.describe()} from the Hugging Face hub "
                f"({type(exc).__name__}: {exc}); without a network, put the files in the data "
                "directory and load with source='local'"
            ) from exc
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[self.split]
        if self.hold_out is not None:
            ds = ds.select(self.hold_out.indices(len(ds)))
        if limit is not None:
            ds = ds.select(range(min(limit, len(ds))))
        if len(ds) == 0:
            raise EmptyDataError(f"{self.describe()} has no rows")
        wanted = [self.text_column, self.label_column]
        if self.text_b_column is not None:
            wanted.append(self.text_b_column)
        for name in wanted:
            if name not in ds.column_names:
                raise DataError(
                    f"{self.describe()} has no column {name!r}; its columns are {ds.column_names}"
                )
        return _RawSplit(
            texts=list(ds[self.text_column]),
            labels=list(ds[self.label_column]),
            texts_b=None if self.text_b_column is None else list(ds[self.text_b_column]),
        )


@dataclass(frozen=True)
class Split:
    """Where one split of a task comes from; at least one source must be set.

    ``data`` (in memory) wins over the others; otherwise :meth:`Task.load`'s ``source``
    chooses between ``local`` and ``hub``.
    """

    local: LocalFile | None = None
    hub: HubSource | None = None
    data: TaskData | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.local is None and self.hub is None and self.data is None:
            raise DataError("a Split needs a local file, a hub source or in-memory data")


@dataclass(frozen=True)
class _RawSplit:
    """Columns as read, before labels are mapped to the task's integers."""

    texts: list[Any]
    labels: list[Any]
    texts_b: list[Any] | None


@dataclass
class Task:
    """A classification task: labels, prompt template, verbalizer, label space and splits.

    Attributes:
        name: registry name (``"sst2"``).
        label_names: class names; ``label_names[i]`` is label ``i`` in every source.
        template: prompt with ``{text}``, ``{mask}`` and, for pair tasks, ``{text_b}``
            (``"{text} It was {mask}."``; ``"{text} ? {mask} , {text_b}"``). Literal braces
            are written ``{{`` and ``}}``.
        verbalizer: one label word per class, in label order (defaults to ``label_names``).
        splits: split name -> :class:`Split`.
        label_space: what the label integers mean, shared by tasks whose prompts and
            verbalizers may be evaluated on each other (``"sentiment2"`` for SST-2, IMDB and
            AdvSST2). Defaults to the task's name.
        description: a line on the task and its splits.
        train_has_phrases: ``train`` holds phrases of its own sentences (SST-2 holds every
            phrase of every parse tree), so rows held out of it share sentences with the rest;
            validation should then come from
            :func:`~neuronlens.tasks.splits.sentence_disjoint_split` (studies do this).
    """

    name: str
    label_names: tuple[str, ...]
    template: str = SINGLE_TEMPLATE
    verbalizer: tuple[str, ...] | None = None
    splits: dict[str, Split] = field(default_factory=dict)
    label_space: str | None = None
    description: str = ""
    train_has_phrases: bool = False

    def __post_init__(self) -> None:
        self.label_names = tuple(self.label_names)
        if not self.label_names:
            raise DataError(f"task {self.name!r}: label_names is empty")
        if len(set(self.label_names)) != len(self.label_names):
            raise DataError(f"task {self.name!r}: repeated label names {list(self.label_names)}")
        self.verbalizer = tuple(self.label_names if self.verbalizer is None else self.verbalizer)
        if len(self.verbalizer) != len(self.label_names):
            raise ShapeMismatchError(
                f"task {self.name!r}: {len(self.verbalizer)} verbalizer words for "
                f"{len(self.label_names)} labels {list(self.label_names)}"
            )
        if len(set(self.verbalizer)) != len(self.verbalizer):
            raise DataError(f"task {self.name!r}: repeated verbalizer words {self.verbalizer}")
        if self.label_space is None:
            self.label_space = self.name
        fields = _template_fields(self.template, self.name)
        self._is_pair = "text_b" in fields
        for split_name, spec in self.splits.items():
            if not isinstance(spec, Split):
                raise DataError(
                    f"task {self.name!r}: split {split_name!r} is {type(spec).__name__}, "
                    "not a Split"
                )
            self._check_pairing(split_name, spec)

    def _check_pairing(self, split_name: str, spec: Split) -> None:
        """Each source of a split gives second texts exactly when the template uses them."""
        sources = []
        if spec.local is not None:
            sources.append(("local file", spec.local.text_b_column is not None))
        if spec.hub is not None:
            sources.append(("hub source", spec.hub.text_b_column is not None))
        if spec.data is not None:
            sources.append(("data", spec.data.texts_b is not None))
        for what, pair in sources:
            if pair != self._is_pair:
                need = "has {text_b}" if self._is_pair else "has no {text_b}"
                gives = "gives a" if pair else "gives no"
                raise DataError(
                    f"task {self.name!r}, split {split_name!r}: the template {need} but the "
                    f"{what} {gives} second text"
                )

    @property
    def num_labels(self) -> int:
        """The number of classes."""
        return len(self.label_names)

    @property
    def is_pair(self) -> bool:
        """Whether examples are sentence pairs (the template has ``{text_b}``)."""
        return self._is_pair

    def render(self, text: str, text_b: str | None = None, mask_token: str = "<mask>") -> str:
        """The prompt for one example: the template filled with the stripped texts."""
        if self.is_pair and text_b is None:
            raise DataError(f"task {self.name!r} is a pair task: pass text_b")
        if not self.is_pair and text_b is not None:
            raise DataError(f"task {self.name!r} takes one text; its template has no {{text_b}}")
        return self.template.format(
            text=text.strip(), text_b=(text_b or "").strip(), mask=mask_token
        )

    def render_all(self, data: TaskData, mask_token: str = "<mask>") -> list[str]:
        """The prompts for every example of ``data``."""
        texts_b = data.texts_b or (None,) * len(data)
        return [self.render(a, b, mask_token) for a, b in zip(data.texts, texts_b, strict=True)]

    def load(
        self,
        split: str,
        data_dir: str | os.PathLike | None = None,
        source: str = "auto",
        limit: int | None = None,
    ) -> TaskData:
        """Load a split, with labels as this task's integers.

        Args:
            split: one of ``self.splits``.
            data_dir: the data directory (default ``$NEURONLENS_DATA_DIR``).
            source: ``"local"`` (file in the data directory), ``"hub"``
                (``datasets.load_dataset``) or ``"auto"``: local when a data directory is
                configured and the file is there, else the hub. In-memory splits ignore it.
            limit: read at most this many examples (the first ones).
        """
        if split not in self.splits:
            raise DataError(
                f"task {self.name!r} has no split {split!r}; its splits are {list(self.splits)}"
            )
        if source not in SOURCES:
            raise DataError(f"source must be one of {SOURCES}, got {source!r}")
        if limit is not None:
            _check_count(limit)
        spec = self.splits[split]
        if spec.data is not None:
            return spec.data if limit is None else spec.data.take(limit)
        where = f"task {self.name!r}, split {split!r}"
        picked = self._pick_source(spec, data_dir, source, where)
        if isinstance(picked, HubSource):
            return self._make_data(split, picked.read(limit), picked.label_map, where)
        base = None if Path(picked.path).expanduser().is_absolute() else resolve_data_dir(data_dir)
        path = picked.resolve(base)
        if not path.is_file():
            _, setting = _configured_data_dir(data_dir)
            origin = f"data dir {base}, from {setting}" if base is not None else "absolute path"
            hub = "; or load it with source='hub'" if spec.hub is not None else ""
            raise DataFileNotFoundError(f"{where}: file {path} not found ({origin}){hub}")
        return self._make_data(split, picked.read(path, limit), picked.label_map, where)

    @staticmethod
    def _pick_source(
        spec: Split, data_dir: str | os.PathLike | None, source: str, where: str
    ) -> LocalFile | HubSource:
        """The local file or hub source that ``source`` asks for (see :meth:`load`)."""
        if source == "local" or (source == "auto" and spec.hub is None):
            if spec.local is None:
                raise DataError(f"{where} has no local file; load it with source='hub'")
            return spec.local
        if spec.hub is None:
            raise DataError(f"{where} is not on the hub; load it with source='local'")
        if source == "hub" or spec.local is None:
            return spec.hub
        path = Path(spec.local.path).expanduser()
        if not path.is_absolute():
            base, _ = _configured_data_dir(data_dir)
            if base is None:
                return spec.hub
            path = base / path
        return spec.local if path.is_file() else spec.hub

    def _make_data(
        self, split: str, raw: _RawSplit, label_map: Mapping[Any, int] | None, where: str
    ) -> TaskData:
        index = {name: i for i, name in enumerate(self.label_names)}
        labels = tuple(
            _to_label(value, index, label_map, f"{where}, row {i}")
            for i, value in enumerate(raw.labels)
        )
        return TaskData(
            texts=tuple(raw.texts),
            labels=labels,
            texts_b=None if raw.texts_b is None else tuple(raw.texts_b),
            task=self.name,
            split=split,
            label_names=self.label_names,
        )

    @classmethod
    def from_lists(
        cls,
        name: str,
        texts: Sequence[str] | None = None,
        labels: Sequence[int | str] | None = None,
        *,
        label_names: Sequence[str],
        template: str = SINGLE_TEMPLATE,
        verbalizer: Sequence[str] | None = None,
        texts_b: Sequence[str] | None = None,
        splits: Mapping[str, Sequence[Sequence[Any]]] | None = None,
        label_space: str | None = None,
        description: str = "",
    ) -> Task:
        """A task from in-memory data.

        Either ``texts`` and ``labels`` (and ``texts_b``), which become the split ``"train"``,
        or ``splits={"train": (texts, labels), "validation": (texts, labels, texts_b), ...}``.
        Labels are integers or strings from ``label_names``. Pair tasks need a template with
        ``{text_b}``, e.g. ``"{text} ? {mask} , {text_b}"``.
        """
        if splits is None:
            if texts is None or labels is None:
                raise DataError(f"task {name!r}: pass texts and labels, or splits=")
            splits = {"train": (texts, labels) if texts_b is None else (texts, labels, texts_b)}
        elif texts is not None or labels is not None or texts_b is not None:
            raise DataError(f"task {name!r}: pass either texts/labels/texts_b or splits=, not both")
        if not splits:
            raise EmptyDataError(f"task {name!r}: splits= is empty")
        task = cls(
            name=name,
            label_names=tuple(label_names),
            template=template,
            verbalizer=None if verbalizer is None else tuple(verbalizer),
            label_space=label_space,
            description=description,
        )
        for split_name, columns in splits.items():
            if len(columns) not in (2, 3):
                raise DataError(
                    f"task {name!r}, split {split_name!r}: give (texts, labels) or "
                    f"(texts, labels, texts_b), got {len(columns)} items"
                )
            raw = _RawSplit(
                texts=list(columns[0]),
                labels=list(columns[1]),
                texts_b=list(columns[2]) if len(columns) == 3 else None,
            )
            where = f"task {name!r}, split {split_name!r}"
            spec = Split(data=task._make_data(split_name, raw, None, where))
            task._check_pairing(split_name, spec)
            task.splits[split_name] = spec
        return task

    @classmethod
    def from_file(
        cls,
        name: str,
        path_per_split: Mapping[str, str | os.PathLike],
        text_column: Column,
        label_column: Column,
        label_names: Sequence[str],
        text_b_column: Column | None = None,
        *,
        template: str | None = None,
        verbalizer: Sequence[str] | None = None,
        label_space: str | None = None,
        header: bool = True,
        quotes: bool | None = None,
        json_key: str | None = None,
        label_map: Mapping[Any, int] | None = None,
        description: str = "",
    ) -> Task:
        """A task read from files, one per split (.csv, .tsv, .jsonl or .json).

        Paths are resolved now, against the current directory. Files are read at
        :meth:`load` time. The template defaults to ``"{text} It was {mask}."``, or
        ``"{text} ? {mask} , {text_b}"`` with a ``text_b_column``. See :class:`LocalFile` for
        ``header``, ``quotes``, ``json_key`` and ``label_map``.
        """
        if not path_per_split:
            raise DataError(f"task {name!r}: path_per_split is empty")
        if template is None:
            template = SINGLE_TEMPLATE if text_b_column is None else PAIR_TEMPLATE
        splits = {}
        for split_name, path in path_per_split.items():
            full = Path(path).expanduser().resolve()
            if full.suffix.lower() not in FILE_FORMATS:
                raise DataError(
                    f"task {name!r}, split {split_name!r}: {full} is not one of {FILE_FORMATS}"
                )
            splits[split_name] = Split(
                local=LocalFile(
                    path=str(full),
                    text_column=text_column,
                    label_column=label_column,
                    text_b_column=text_b_column,
                    header=header,
                    quotes=quotes,
                    json_key=json_key,
                    label_map=label_map,
                )
            )
        return cls(
            name=name,
            label_names=tuple(label_names),
            template=template,
            verbalizer=None if verbalizer is None else tuple(verbalizer),
            splits=splits,
            label_space=label_space,
            description=description,
        )


def _template_fields(template: str, task: str) -> set[str]:
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise DataError(f"task {task!r}: bad template {template!r} ({exc})") from exc
    unknown = fields - set(TEMPLATE_FIELDS)
    if unknown:
        raise DataError(
            f"task {task!r}: template {template!r} has unknown fields {sorted(unknown)}; "
            f"allowed are {list(TEMPLATE_FIELDS)} (write literal braces as {{{{ }}}})"
        )
    for needed in ("text", "mask"):
        if needed not in fields:
            raise DataError(f"task {task!r}: template {template!r} has no {{{needed}}}")
    return fields


def _to_label(
    value: Any, index: Mapping[str, int], label_map: Mapping[Any, int] | None, where: str
) -> int:
    """A raw label (integer, digit string or label name) as the task's integer."""
    if label_map is not None:
        key = value.strip() if isinstance(value, str) else value
        if key not in label_map:
            raise DataError(f"{where}: label {value!r} is not in the label map {dict(label_map)}")
        return label_map[key]
    if isinstance(value, str):
        text = value.strip()
        if text in index:
            return index[text]
        if text.lstrip("-").isdigit():
            return int(text)
        raise DataError(f"{where}: unknown label {value!r}; label names are {list(index)}")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise DataError(f"{where}: label {value!r} is neither an integer nor a label name")
    return int(value)


def _read_records(
    path: Path, *, header: bool, quotes: bool | None, json_key: str | None, limit: int | None
) -> tuple[tuple[Column, ...], list[Mapping[Column, Any]]]:
    """Column names (or positions) and the rows of a data file, as mappings."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return _read_table(path, header=header, quotes=quotes, limit=limit)
    if suffix == ".jsonl":
        records = _read_jsonl(path, limit)
    elif suffix == ".json":
        records = _read_json(path, json_key)[:limit]
    else:
        raise DataError(f"{path}: unsupported file type; use one of {FILE_FORMATS}")
    return (tuple(records[0]) if records else ()), records


def _read_table(
    path: Path, *, header: bool, quotes: bool | None, limit: int | None
) -> tuple[tuple[Column, ...], list[Mapping[Column, Any]]]:
    tsv = path.suffix.lower() == ".tsv"
    quoted = (not tsv) if quotes is None else quotes
    columns: tuple[Column, ...] | None = None
    records: list[Mapping[Column, Any]] = []
    with path.open(encoding="utf-8-sig", newline="") as f:  # -sig drops MRPC's BOM
        reader = csv.reader(
            f,
            delimiter="\t" if tsv else ",",
            quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE,
        )
        try:
            for row in reader:
                if not row:
                    continue
                if columns is None:
                    if header:
                        columns = tuple(name.strip() for name in row)
                        continue
                    columns = tuple(range(len(row)))
                if len(row) != len(columns):
                    hint = "" if quoted else " (if fields are wrapped in quotes, pass quotes=True)"
                    raise DataError(
                        f"{path}, line {reader.line_num}: {len(row)} fields where the "
                        f"{'header has' if header else 'first row has'} {len(columns)}{hint}"
                    )
                records.append(dict(zip(columns, row, strict=True)))
                if limit is not None and len(records) >= limit:
                    break
        except csv.Error as exc:
            raise DataError(f"{path}, line {reader.line_num}: {exc}") from exc
    return columns or (), records


def _read_jsonl(path: Path, limit: int | None) -> list[Mapping[Column, Any]]:
    records: list[Mapping[Column, Any]] = []
    with path.open(encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if limit is not None and len(records) >= limit:
                break
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}, line {n}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise DataError(f"{path}, line {n}: a JSON object per line is expected")
            records.append(record)
    return records


def _read_json(path: Path, json_key: str | None) -> list[Mapping[Column, Any]]:
    try:
        content = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    if json_key is not None:
        if not isinstance(content, dict) or json_key not in content:
            keys = list(content) if isinstance(content, dict) else "none (it is a list)"
            raise DataError(f"{path}: no key {json_key!r}; its top-level keys are {keys}")
        content = content[json_key]
    elif isinstance(content, dict):
        raise DataError(
            f"{path}: the top level is an object with keys {list(content)}; "
            "pass json_key= to choose the list of records"
        )
    if not isinstance(content, list) or not all(isinstance(r, dict) for r in content):
        raise DataError(f"{path}: expected a list of JSON objects (one per example)")
    return content


def _column(
    records: list[Mapping[Column, Any]], columns: tuple[Column, ...], column: Column, path: Path
) -> list[Any]:
    if column not in columns:
        raise DataError(f"{path}: no column {column!r}; its columns are {list(columns)}")
    try:
        return [record[column] for record in records]
    except KeyError:
        row = next(i for i, r in enumerate(records) if column not in r)
        raise DataError(f"{path}: record {row} has no field {column!r}") from None
