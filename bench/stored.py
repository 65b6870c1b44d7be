"""Rows stored as bench/results/rows/NAME.json: run a row or reuse it, and read back the current ones."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from bench.common import ATTRIBUTES, log
from bench.rows import COLOUR_ATTRIBUTES, ROWS, row_config
from bench.selection import finetune_rows
from bench.tfidf import TFIDF_CONFIG


def strip_private(obj):
    if isinstance(obj, dict):
        return {k: strip_private(v) for k, v in obj.items() if not k.startswith("_")}
    return obj


def same_config(stored: dict[str, Any] | None, current: dict[str, Any]) -> bool:
    """A stored row was made with `current`: equal once unset (None) settings are dropped from both,
    so a setting added later with an off-by-default None (e.g. training.max_seconds) keeps old rows."""

    def set_only(obj):
        if isinstance(obj, dict):
            return {k: set_only(v) for k, v in obj.items() if v is not None}
        return obj

    return stored is not None and set_only(stored) == set_only(json.loads(json.dumps(current)))


def run_row(out: Path, name: str, config: dict[str, Any], fn, reuse: bool) -> dict[str, Any]:
    """Run one row, or (with --reuse) read it back from bench/results/rows/NAME.json when its config is unchanged."""
    path = out / "rows" / f"{name}.json"
    if reuse and path.is_file():
        old = json.loads(path.read_text())
        if same_config(old.get("config"), config):
            log(f"{name}: reusing {path}")
            return old
    start = time.perf_counter()
    row = strip_private(fn())
    row["wall_seconds"] = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")  # rows are read while other processes write theirs
    tmp.write_text(json.dumps(row, indent=1, default=float))
    tmp.replace(path)
    return row


def stored_rows(out: Path, prefix: str = "", names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Rows in bench/results/rows/ made with the benchmark's current config (others are stale)."""
    found = {}
    attributes = COLOUR_ATTRIBUTES if prefix else ATTRIBUTES
    for n in names or ["tfidf_lr", *ROWS, *finetune_rows(out, missing_ok=True)]:
        p = out / "rows" / f"{prefix}{n}.json"
        if not p.is_file():
            continue
        row = json.loads(p.read_text())
        current = TFIDF_CONFIG if n == "tfidf_lr" else row_config(n, attributes).model_dump(mode="json")
        if same_config(row.get("config"), current):
            found[n] = row
    return found
