"""The prediction log: every prediction the endpoint serves, as rows of Parquet that monitoring
reads back (`read_prediction_log`). Plain Python: the endpoint (serving/) writes it, anything reads it.

Layout, one folder per model name:

    ATTRFLOW_HOME/predictions/<model>/date=YYYY-MM-DD/part-<HHMMSS>-<pid>-<n>.parquet

A file is written under a dot-name and renamed into place, so a reader never sees half a file
(readers skip dot-files). One row per product (see `SCHEMA`):

- request_id, product_index (within the request), product_id (the client's id), time (UTC)
- model_name, model_version (null when a model folder is served instead of a registry version)
- the input summary (`input_summary`): title / description length in characters, has_image, and
  for an image its width, height, brightness (mean luma, 0-1) and colourfulness (Hasler and
  Suesstrunk's M on 0-1 pixel values, computed on a 64x64 thumbnail so it does not depend on
  the model's input size)
- text_embedding / image_embedding: the model's pooled vectors (optional; null when not logged,
  image_embedding all zeros for a product without an image, as the model sees it)
- predictions: per attribute the returned values in rank order, each with its score and whether
  it is published (`attribute_columns` turns that into one column per attribute)

`PredictionLogWriter` appends rows from a queue on a writer thread: `append` never blocks and
never raises; rows that cannot be queued or written are counted through a callback.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from PIL import Image

from components.settings import get_settings

if TYPE_CHECKING:
    from components.inference.inputs import Product

log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("product_index", pa.int32()),
        ("product_id", pa.string()),
        ("time", pa.timestamp("us", tz="UTC")),
        ("model_name", pa.string()),
        ("model_version", pa.int64()),
        ("title_chars", pa.int32()),
        ("description_chars", pa.int32()),
        ("has_image", pa.bool_()),
        ("image_width", pa.int32()),
        ("image_height", pa.int32()),
        ("image_brightness", pa.float32()),
        ("image_colourfulness", pa.float32()),
        ("text_embedding", pa.list_(pa.float32())),
        ("image_embedding", pa.list_(pa.float32())),
        (
            "predictions",
            pa.list_(
                pa.struct(
                    [
                        ("attribute", pa.string()),
                        ("value", pa.string()),
                        ("score", pa.float32()),
                        ("published", pa.bool_()),
                    ]
                )
            ),
        ),
    ]
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a model name is a folder name
_THUMBNAIL = (64, 64)


def prediction_log_dir(model: str, home: Path | str | None = None) -> Path:
    """ATTRFLOW_HOME/predictions/<model> (or under `home`)."""
    if not _NAME.match(model):
        raise ValueError(f"invalid model name {model!r}: use letters, digits, _ . - (not first)")
    return Path(home if home is not None else get_settings().home) / "predictions" / model


# --- the input summary --------------------------------------------------------------------------


def image_summary(image: Image.Image) -> dict[str, Any]:
    """Width, height, brightness (mean ITU-R 601 luma, 0-1) and colourfulness (Hasler and
    Suesstrunk 2003: std + 0.3 mean of the rg / yb opponent channels, on 0-1 pixel values) of
    an image; the last two on a 64x64 thumbnail."""
    small = image.convert("RGB").resize(_THUMBNAIL, Image.BILINEAR)
    px = np.asarray(small, dtype=np.float32) / 255.0
    r, g, b = px[..., 0], px[..., 1], px[..., 2]
    rg, yb = r - g, 0.5 * (r + g) - b
    colourfulness = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
    return {
        "image_width": image.width,
        "image_height": image.height,
        "image_brightness": float((0.299 * r + 0.587 * g + 0.114 * b).mean()),
        "image_colourfulness": float(colourfulness),
    }


def input_summary(product: Product) -> dict[str, Any]:
    """What the log keeps of a product's input: text lengths and the image summary."""
    summary: dict[str, Any] = {
        "title_chars": len(product.title),
        "description_chars": len(product.description),
        "has_image": product.image is not None,
        "image_width": None,
        "image_height": None,
        "image_brightness": None,
        "image_colourfulness": None,
    }
    if product.image is not None:
        summary.update(image_summary(product.image))
    return summary


def log_row(
    *,
    request_id: str,
    product_index: int,
    product_id: str | None,
    time: datetime,
    model_name: str,
    model_version: int | None,
    summary: dict[str, Any],
    attributes: dict[str, Any],
    text_embedding: np.ndarray | None = None,
    image_embedding: np.ndarray | None = None,
) -> dict[str, Any]:
    """One row of the log: `summary` from `input_summary`, `attributes` as the Predictor returns them."""
    predictions = [
        {"attribute": name, "value": str(v["value"]), "score": float(v["score"]), "published": bool(v["published"])}
        for name, attr in attributes.items()
        for v in attr["values"]
    ]
    return {
        "request_id": request_id,
        "product_index": product_index,
        "product_id": product_id,
        "time": time,
        "model_name": model_name,
        "model_version": model_version,
        **summary,
        "text_embedding": text_embedding,
        "image_embedding": image_embedding,
        "predictions": predictions,
    }


# --- writing ------------------------------------------------------------------------------------


class PredictionLogWriter:
    """Appends log rows to Parquet from a background thread.

    `append` puts rows on a bounded queue and returns at once; the thread writes what has
    gathered every `flush_seconds` (or sooner, at `rows_per_file`), one file per model and day.
    Nothing here raises into the caller: rows that find the queue full, or whose write fails,
    are dropped, logged and reported to `on_dropped(reason, rows)` ("queue_full", "write_error",
    "closed"); `on_written(rows)` reports the rows that made it to disk.
    """

    def __init__(
        self,
        root: Path | str | None = None,
        flush_seconds: float = 5.0,
        max_queue_rows: int = 100_000,
        rows_per_file: int = 50_000,
        on_dropped: Callable[[str, int], None] | None = None,
        on_written: Callable[[int], None] | None = None,
    ) -> None:
        self.root = Path(root if root is not None else get_settings().home / "predictions")
        self.flush_seconds = flush_seconds
        self.max_queue_rows = max_queue_rows
        self.rows_per_file = rows_per_file
        self._on_dropped = on_dropped
        self._on_written = on_written
        self._queue: queue.Queue[list[dict[str, Any]] | threading.Event | None] = queue.Queue()
        self._queued_rows = 0
        self._lock = threading.Lock()
        self._closed = False
        self._files = count()
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._thread.start()

    def append(self, rows: Sequence[dict[str, Any]]) -> bool:
        """Queue rows for writing; False (and the rows counted as dropped) if they do not fit."""
        rows = list(rows)
        if not rows:
            return True
        with self._lock:
            if self._closed:
                reason = "closed"
            elif self._queued_rows + len(rows) > self.max_queue_rows:
                reason = "queue_full"
            else:
                self._queued_rows += len(rows)
                self._queue.put(rows)
                return True
        self._dropped(reason, len(rows))
        return False

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every row appended so far is written (or dropped); False on timeout."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Write what is queued and stop the thread; later appends are dropped as "closed"."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(None)
        self._thread.join(timeout)

    # --- the writer thread ---

    def _run(self) -> None:
        pending: list[dict[str, Any]] = []
        deadline: float | None = None
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = []  # the deadline passed: write what is pending
            if isinstance(item, list) and item:
                with self._lock:
                    self._queued_rows -= len(item)
                pending.extend(item)
                if deadline is None:
                    deadline = time.monotonic() + self.flush_seconds
                if len(pending) < self.rows_per_file and time.monotonic() < deadline:
                    continue
            self._write(pending)
            pending, deadline = [], None
            if isinstance(item, threading.Event):
                item.set()
            elif item is None:
                return

    def _write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in rows:
            day = _utc(row["time"]).strftime("%Y-%m-%d")
            groups.setdefault((row["model_name"], day), []).append(row)
        for (model, day), group in groups.items():
            try:
                if not _NAME.match(model):
                    raise ValueError(f"invalid model name {model!r}")
                folder = self.root / model / f"date={day}"
                folder.mkdir(parents=True, exist_ok=True)
                name = f"part-{datetime.now(UTC):%H%M%S}-{os.getpid()}-{next(self._files)}.parquet"
                tmp = folder / f".{name}.tmp"
                pq.write_table(pa.Table.from_pylist(group, schema=SCHEMA), tmp)
                os.replace(tmp, folder / name)
            except Exception:
                log.exception("prediction log: could not write %d rows for %s", len(group), model)
                self._dropped("write_error", len(group))
            else:
                if self._on_written is not None:
                    self._on_written(len(group))

    def _dropped(self, reason: str, rows: int) -> None:
        if reason != "write_error":
            log.warning("prediction log: %d rows dropped (%s)", rows, reason)
        if self._on_dropped is not None:
            try:
                self._on_dropped(reason, rows)
            except Exception:
                log.exception("prediction log: the on_dropped callback failed")


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


# --- reading ------------------------------------------------------------------------------------


def read_prediction_log(
    model: str,
    since: datetime | str | None = None,
    home: Path | str | None = None,
    columns: Iterable[str] | None = None,
) -> pd.DataFrame:
    """The logged predictions of `model` (rows with time >= `since`, UTC when naive), oldest first.

    An empty frame with the log's columns when nothing has been logged.
    """
    folder = prediction_log_dir(model, home)
    names = list(columns) if columns is not None else SCHEMA.names
    start = _utc(datetime.fromisoformat(since) if isinstance(since, str) else since) if since is not None else None
    files = []
    for day_dir in sorted(folder.glob("date=*")):
        # Whole days before `since` are skipped without opening their files.
        if start is not None and day_dir.name.removeprefix("date=") < start.strftime("%Y-%m-%d"):
            continue
        files.extend(str(p) for p in sorted(day_dir.glob("*.parquet")) if not p.name.startswith("."))
    if not files:
        return SCHEMA.empty_table().select(names).to_pandas()
    dataset = pads.dataset(files, schema=SCHEMA, format="parquet")
    condition = None if start is None else pads.field("time") >= pa.scalar(start, type=SCHEMA.field("time").type)
    table = dataset.to_table(columns=names, filter=condition)
    frame = table.to_pandas()
    if "time" in frame:
        frame = frame.sort_values("time", kind="stable").reset_index(drop=True)
    return frame


def attribute_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """The `predictions` column as one column per attribute: `<attr>` (the top value),
    `<attr>.score` and `<attr>.published` (of that value), index aligned with `frame`."""
    records: list[dict[str, Any]] = []
    for predictions in frame["predictions"]:
        record: dict[str, Any] = {}
        for p in predictions if predictions is not None else ():
            if p["attribute"] not in record:  # values are stored in rank order: the first is the top one
                record[p["attribute"]] = p["value"]
                record[f"{p['attribute']}.score"] = p["score"]
                record[f"{p['attribute']}.published"] = p["published"]
        records.append(record)
    return pd.DataFrame.from_records(records, index=frame.index)
