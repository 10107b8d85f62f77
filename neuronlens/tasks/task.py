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

A split that cannot be found or read raises an error that names both settings of the data
directory (``data_dir=`` and ``NEURONLENS_DATA_DIR``) and says whether the hub was tried.

A task also names the split a study evaluates on by default, :attr:`Task.eval_split`
(:func:`default_eval_split`: ``dev``, else ``test``, else ``validation``, ...).
"""

from __future__ import annotations

import numbers
import os
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuronlens.errors import (
    DataError,
    DataFileNotFoundError,
    EmptyDataError,
    ShapeMismatchError,
)
from neuronlens.tasks.data import (
    DATA_DIR_ENV,
    TaskData,
    check_count,
    configured_data_dir,
    resolve_data_dir,
)
from neuronlens.tasks.readers import FILE_FORMATS, Column, RawSplit
from neuronlens.tasks.sources import SOURCES, HubSource, LocalFile, Split

TEMPLATE_FIELDS = ("text", "text_b", "mask")
SINGLE_TEMPLATE = "{text} It was {mask}."
PAIR_TEMPLATE = "{text} ? {mask} , {text_b}"
EVAL_SPLITS = ("dev", "test", "validation")
"""Split names a study evaluates on by default, in order of preference (see
:func:`default_eval_split`)."""


def default_eval_split(splits: Mapping[str, Any]) -> str | None:
    """The split a study evaluates on when the task names none.

    The first of :data:`EVAL_SPLITS` the task has: ``dev`` (GLUE's dev set, which the papers
    report as their test set, GLUE's own test labels being hidden; AdvGLUE's only split),
    else ``test`` (IMDB, ETHICS, AG News, ``toy_sentiment``), else ``validation``; else the
    first split that is not ``train``; else ``train`` (training data only: a study divides
    it). None for a task without splits.
    """
    for name in EVAL_SPLITS:
        if name in splits:
            return name
    others = [name for name in splits if name != "train"]
    return others[0] if others else next(iter(splits), None)


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
        eval_split: the split a study evaluates on by default (SST-2: ``"dev"``, GLUE's dev
            set; ``toy_sentiment``: ``"test"``). ``None`` (the default) derives it from the
            split names by :func:`default_eval_split`; a name given must be one of ``splits``.
    """

    name: str
    label_names: tuple[str, ...]
    template: str = SINGLE_TEMPLATE
    verbalizer: tuple[str, ...] | None = None
    splits: dict[str, Split] = field(default_factory=dict)
    label_space: str | None = None
    description: str = ""
    train_has_phrases: bool = False
    eval_split: str | None = None

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
        self._set_eval_split(self.eval_split)

    def _set_eval_split(self, name: str | None) -> None:
        """Set :attr:`eval_split`: ``name``, checked to be a split, or the default one."""
        if name is None:
            self.eval_split = default_eval_split(self.splits)
        elif name not in self.splits:
            raise DataError(
                f"task {self.name!r}: eval_split {name!r} is not one of its splits "
                f"{list(self.splits)}"
            )
        else:
            self.eval_split = name

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
            check_count(limit)
        spec = self.splits[split]
        if spec.data is not None:
            return spec.data if limit is None else spec.data.take(limit)
        where = f"task {self.name!r}, split {split!r}"
        picked = self._pick_source(spec, data_dir, source, where)
        if isinstance(picked, HubSource):
            raw = picked.read(limit, why=_why_hub(spec, data_dir, source), where=where)
            return self._make_data(split, raw, picked.label_map, where)
        base = None if Path(picked.path).expanduser().is_absolute() else resolve_data_dir(data_dir)
        path = picked.resolve(base)
        if not path.is_file():
            hub = "; or load it from the hub with source='hub'" if spec.hub is not None else ""
            if base is None:
                raise DataFileNotFoundError(
                    f"{where}: file {path} not found (an absolute path: data_dir= and "
                    f"{DATA_DIR_ENV} do not apply){hub}"
                )
            _, setting = configured_data_dir(data_dir)
            raise DataFileNotFoundError(
                f"{where}: file {path} not found in the data directory {base} (from "
                f"{setting}); put it there, or {_point_at(picked)}{hub}"
            )
        return self._make_data(split, picked.read(path, limit), picked.label_map, where)

    @staticmethod
    def _pick_source(
        spec: Split, data_dir: str | os.PathLike | None, source: str, where: str
    ) -> LocalFile | HubSource:
        """The local file or hub source that ``source`` asks for (see :meth:`load`)."""
        if source == "local" or (source == "auto" and spec.hub is None):
            if spec.local is None:
                raise DataError(
                    f"{where} has no local file, so no data directory (data_dir= or "
                    f"{DATA_DIR_ENV}) holds it; load it with source='hub'"
                )
            return spec.local
        if spec.hub is None:
            raise DataError(
                f"{where} is not on the hub; load it with source='local' from the data "
                f"directory (data_dir= or {DATA_DIR_ENV})"
            )
        if source == "hub" or spec.local is None:
            return spec.hub
        path = Path(spec.local.path).expanduser()
        if not path.is_absolute():
            base, setting = configured_data_dir(data_dir)
            if base is None:
                return spec.hub
            if not base.is_dir():  # a data directory was asked for: never fall back quietly
                raise DataFileNotFoundError(
                    f"{where}: the data directory {base} (from {setting}) does not exist; fix "
                    f"data_dir= or {DATA_DIR_ENV}, or pass source='hub' to read the split "
                    "from the hub"
                )
            path = base / path
        return spec.local if path.is_file() else spec.hub

    def _make_data(
        self, split: str, raw: RawSplit, label_map: Mapping[Any, int] | None, where: str
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
        eval_split: str | None = None,
    ) -> Task:
        """A task from in-memory data.

        Either ``texts`` and ``labels`` (and ``texts_b``), which become the split ``"train"``,
        or ``splits={"train": (texts, labels), "validation": (texts, labels, texts_b), ...}``.
        Labels are integers or strings from ``label_names``. Pair tasks need a template with
        ``{text_b}``, e.g. ``"{text} ? {mask} , {text_b}"``. ``eval_split`` defaults to
        :func:`default_eval_split` of the split names (``"train"`` when it is the only one).
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
            raw = RawSplit(
                texts=list(columns[0]),
                labels=list(columns[1]),
                texts_b=list(columns[2]) if len(columns) == 3 else None,
            )
            where = f"task {name!r}, split {split_name!r}"
            spec = Split(data=task._make_data(split_name, raw, None, where))
            task._check_pairing(split_name, spec)
            task.splits[split_name] = spec
        task._set_eval_split(eval_split)
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
        eval_split: str | None = None,
    ) -> Task:
        """A task read from files, one per split (.csv, .tsv, .jsonl or .json).

        Paths are resolved now, against the current directory. Files are read at
        :meth:`load` time. The template defaults to ``"{text} It was {mask}."``, or
        ``"{text} ? {mask} , {text_b}"`` with a ``text_b_column``. See :class:`LocalFile` for
        ``header``, ``quotes``, ``json_key`` and ``label_map``; :attr:`eval_split` defaults
        to :func:`default_eval_split` of the split names.
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
            eval_split=eval_split,
        )


def _point_at(local: LocalFile) -> str:
    return f"point data_dir= or {DATA_DIR_ENV} at the folder that holds {local.path}"


def _why_hub(spec: Split, data_dir: str | os.PathLike | None, source: str) -> str:
    """Why :meth:`Task.load` tried the hub for ``spec``, and how to read it locally instead."""
    if spec.local is None:
        return (
            "this split has no local file, so a data directory (data_dir= or "
            f"{DATA_DIR_ENV}) cannot supply it: it needs the hub (a network, or the datasets "
            "cache); or build a task from your own files with Task.from_file"
        )
    if source == "hub":
        return (
            f"source='hub' was asked for; to read the local file {spec.local.path} instead, "
            f"pass source='local' and data_dir=, or set {DATA_DIR_ENV}"
        )
    path = Path(spec.local.path).expanduser()
    if path.is_absolute():
        return (
            f"the hub was tried because {path} does not exist (data_dir= and {DATA_DIR_ENV} "
            "do not apply to an absolute path)"
        )
    base, setting = configured_data_dir(data_dir)
    if base is None:
        return (
            "the hub was tried because no data directory is configured: pass data_dir= or "
            f"set {DATA_DIR_ENV} to the folder that holds {spec.local.path}"
        )
    return (
        f"the hub was tried because {base / path} is not in the data directory {base} (from "
        f"{setting}): put the file there, or {_point_at(spec.local)}"
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
