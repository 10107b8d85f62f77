"""Where a split comes from: a local file, the Hugging Face hub, or data in memory."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from neuronlens.errors import (
    DataError,
    DataFileNotFoundError,
    EmptyDataError,
)
from neuronlens.tasks.data import DATA_DIR_ENV, TaskData
from neuronlens.tasks.readers import Column, RawSplit, read_column, read_records

SOURCES = ("auto", "local", "hub")


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

    def read(self, path: Path, limit: int | None = None) -> RawSplit:
        """Read the split's columns from ``path`` (at most ``limit`` rows)."""
        columns, records = read_records(
            path, header=self.header, quotes=self.quotes, json_key=self.json_key, limit=limit
        )
        if not records:
            raise EmptyDataError(f"{path} has no rows")
        return RawSplit(
            texts=read_column(records, columns, self.text_column, path),
            labels=read_column(records, columns, self.label_column, path),
            texts_b=None
            if self.text_b_column is None
            else read_column(records, columns, self.text_b_column, path),
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

    def read(self, limit: int | None = None, *, why: str = "", where: str = "") -> RawSplit:
        """Download (or read from the cache) the split's columns.

        ``why``: why the hub was tried and what to do instead, for the error raised when it
        cannot be reached (default: how to read the split from a data directory); ``where``:
        what is being loaded (``task 'sst2', split 'dev'``), to start that error.
        """
        try:
            import datasets

            ds = datasets.load_dataset(
                self.path, self.config, split=self.split, revision=self.revision
            )
        except Exception as exc:  # no datasets, network, offline mode, auth, missing repo ...
            why = why or (
                f"without a network, put the split's file in a data directory (pass data_dir= "
                f"or set {DATA_DIR_ENV}) and load it with source='local'"
            )
            raise DataError(
                f"{where + ': ' if where else ''}could not load {self.describe()} from the "
                f"Hugging Face hub ({type(exc).__name__}: {exc}); {why}"
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
        return RawSplit(
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
