"""Reading a split's columns from .csv, .tsv, .jsonl and .json files."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuronlens.errors import (
    DataError,
)

FILE_FORMATS = (".csv", ".tsv", ".jsonl", ".json")
Column = str | int
"""A column name, or a 0-based position for files without a header row."""


@dataclass(frozen=True)
class RawSplit:
    """Columns as read, before labels are mapped to the task's integers."""

    texts: list[Any]
    labels: list[Any]
    texts_b: list[Any] | None


def read_records(
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


def read_column(
    records: list[Mapping[Column, Any]], columns: tuple[Column, ...], column: Column, path: Path
) -> list[Any]:
    if column not in columns:
        raise DataError(f"{path}: no column {column!r}; its columns are {list(columns)}")
    try:
        return [record[column] for record in records]
    except KeyError:
        row = next(i for i, r in enumerate(records) if column not in r)
        raise DataError(f"{path}: record {row} has no field {column!r}") from None
