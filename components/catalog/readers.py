"""Readers that turn a catalog file into numbered records, one per data row.

A reader never drops a row: a row it cannot parse comes back as a `Record` with
`error` set, so ingestion can quarantine it with the reason.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from components.catalog.spec import SourceFormat


@dataclass
class Record:
    row: int  # 1-based number of the data row in the file (header excluded)
    values: dict[str, Any] | None
    error: str | None = None


class SourceError(ValueError):
    """The catalog file as a whole cannot be read (missing, wrong format, no header)."""


def read_records(path: Path, fmt: SourceFormat) -> Iterator[Record]:
    if not path.is_file():
        raise SourceError(f"catalog source {path} does not exist")
    reader = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}[fmt]
    return reader(path)


def _read_csv(path: Path) -> Iterator[Record]:
    csv.field_size_limit(sys.maxsize)
    # surrogateescape keeps undecodable bytes visible so that row alone is quarantined.
    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.reader(f, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            raise SourceError(f"{path}: empty file, expected a header row") from None
        except csv.Error as e:
            raise SourceError(f"{path}: cannot parse the header row: {e}") from None
        if _has_bad_bytes(header):
            raise SourceError(f"{path}: header is not valid UTF-8")
        row = 0
        while True:
            row += 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield Record(row, None, f"unparseable CSV: {e}")
                continue
            if not fields:  # a blank line is not a row
                row -= 1
                continue
            if len(fields) != len(header):
                yield Record(row, None, f"has {len(fields)} fields, header has {len(header)}")
            elif _has_bad_bytes(fields):
                yield Record(row, None, "contains bytes that are not valid UTF-8")
            else:
                yield Record(row, dict(zip(header, fields, strict=True)))


def _has_bad_bytes(fields: list[str]) -> bool:
    return any(any("\udc80" <= ch <= "\udcff" for ch in f) for f in fields)


def _read_jsonl(path: Path) -> Iterator[Record]:
    row = 0
    with path.open("rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            row += 1
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                yield Record(row, None, f"invalid JSON: {e}")
                continue
            if not isinstance(obj, dict):
                yield Record(row, None, f"expected a JSON object, got {type(obj).__name__}")
                continue
            yield Record(row, obj)


def _read_parquet(path: Path) -> Iterator[Record]:
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise SourceError(f"{path}: cannot read as Parquet: {e}") from None
    for i, values in enumerate(table.to_pylist(), start=1):
        yield Record(i, values)


def cell_text(value: Any) -> str:
    """A cell as stripped text; None, NaN and empty become ''."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value.is_integer():
            return str(int(value))
    return str(value).strip()
