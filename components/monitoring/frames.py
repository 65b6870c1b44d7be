"""Monitoring frames: one row per product, the same columns whether the rows come from a dataset
(and the model's predictions on it) or from the endpoint's prediction log. No Evidently here.

Columns (a column absent or empty on one side is simply not compared):

- inputs, numerical: `title_chars`, `description_chars`, `title_words`, and for products with an
  image `image_width`, `image_height`, `image_brightness`, `image_colourfulness` (as the
  prediction log summarises an image: `components.inference.prediction_log.image_summary`)
- inputs, binary: `has_image`, `title_names:<attr>` (the title names a known value of the
  attribute, whole words, case-insensitive)
- `text_embedding`, `image_embedding`: the pooled vectors, one array per cell (None when absent)
- predictions: `pred:<attr>` (the top value, multiclass), `pred:<attr>=<value>` (1.0 when the value
  is predicted, i.e. published, multilabel: one binary column per known value), `published:<attr>`
  (the top value is published; multilabel: any value is), `score:<attr>` (the top score)
- labels: `label:<attr>` (multiclass), `label:<attr>=<value>` (multilabel); missing labels are NaN
- `product_id`, and `time` for log rows (not compared)

The prediction log keeps only the text lengths, so `title_words` and `title_names:*` exist for
dataset frames only, and a log window is compared on `title_chars` and `description_chars`.
The log keeps the top 3 values of each attribute, so a multilabel product with more values
published than that shows only its first 3.

Binary columns hold 0.0 / 1.0 / NaN.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from components.catalog.dataset import AttributeVocab, Dataset
from components.features.images import load_image
from components.inference.prediction_log import image_summary
from components.monitoring.config import CheckKind, ColumnType

log = logging.getLogger(__name__)

NUMERICAL_INPUTS = (
    "title_chars",
    "description_chars",
    "title_words",
    "image_width",
    "image_height",
    "image_brightness",
    "image_colourfulness",
)
BINARY_INPUTS = ("has_image",)
IMAGE_STATS = ("image_width", "image_height", "image_brightness", "image_colourfulness")
EMBEDDINGS = ("text_embedding", "image_embedding")
OTHER = "(other)"  # pooled rare categorical values (report.py)


@dataclass(frozen=True)
class ColumnInfo:
    kind: CheckKind
    column_type: ColumnType
    attribute: str | None = None
    value: str | None = None  # the value of a one-value-per-column (multilabel) column


def column_info(column: str) -> ColumnInfo | None:
    """What a monitoring-frame column is (None: not a compared column; embeddings excluded)."""
    if column in NUMERICAL_INPUTS:
        return ColumnInfo("input", "numerical")
    if column in BINARY_INPUTS:
        return ColumnInfo("input", "binary")
    prefix, sep, rest = column.partition(":")
    if not sep or not rest:
        return None
    attribute, eq, value = rest.partition("=")
    if prefix == "title_names" and not eq:
        return ColumnInfo("input", "binary", attribute)
    if prefix == "published" and not eq:
        return ColumnInfo("prediction", "binary", attribute)
    if prefix == "score" and not eq:
        return ColumnInfo("prediction", "numerical", attribute)
    if prefix in ("pred", "label"):
        kind: CheckKind = "prediction" if prefix == "pred" else "label"
        return ColumnInfo(kind, "binary", attribute, value) if eq else ColumnInfo(kind, "categorical", attribute)
    return None


# --- from a dataset -----------------------------------------------------------------------------


def frame_from_dataset(
    dataset: Dataset,
    split: str = "test",
    predictions: Sequence[Any] | None = None,
    text_embeddings: np.ndarray | None = None,
    image_embeddings: np.ndarray | None = None,
    *,
    max_rows: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """The monitoring frame of one split of a dataset ("train", "validation", "test" or "all").

    `predictions`: one per row of the split, in order, as `describe` / `Predictor.predict` return
    them (`{"attributes": {name: {"values": [{"value", "score", "published"}, ...]}}}`); the
    attributes mapping alone, or a log-style list of `{"attribute", "value", "score", "published"}`,
    also work. The embeddings: (N, D) arrays aligned with the split's rows, or with all of the
    dataset's rows (the embedding cache's order, `components.features.cache.Encodings`).
    `max_rows`: a seeded sample of the split first (images are read only for the rows kept).
    """
    items = dataset.items
    if split == "all":
        positions = np.arange(len(items))
    elif split in ("train", "validation", "test"):
        positions = np.flatnonzero((items["split"] == split).to_numpy())
    else:
        raise ValueError(f"unknown split {split!r}; use train, validation, test or all")
    n_split = len(positions)
    keep = np.arange(n_split)
    if max_rows is not None and n_split > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(n_split, size=max_rows, replace=False))
    rows = items.iloc[positions[keep]].reset_index(drop=True)

    frame = pd.DataFrame({"product_id": rows["id"].astype(str)})
    titles = [t if isinstance(t, str) else "" for t in rows["title"]]
    descriptions = [d if isinstance(d, str) else "" for d in rows["description"]]
    frame["title_chars"] = [float(len(t)) for t in titles]
    frame["description_chars"] = [float(len(d)) for d in descriptions]
    frame["title_words"] = [float(len(t.split())) for t in titles]
    for name, column in _title_names(titles, dataset.vocab).items():
        frame[f"title_names:{name}"] = column
    image_columns = _image_columns(rows["image_path"].tolist())
    for name, column in image_columns.items():
        frame[name] = column

    for name, values in (("text_embedding", text_embeddings), ("image_embedding", image_embeddings)):
        aligned = _aligned(values, positions, keep, len(items), name)
        if aligned is not None:
            frame[name] = _vector_cells(aligned)
    aligned_predictions = _aligned(predictions, positions, keep, len(items), "predictions")
    if aligned_predictions is not None:
        ranked = [_ranked(p) for p in aligned_predictions]
        for name, column in _prediction_columns(ranked, dataset.vocab).items():
            frame[name] = column
    for name, column in _label_columns(rows, dataset.vocab).items():
        frame[name] = column
    return frame


def reference_frame(
    dataset: Dataset,
    predictions: Sequence[Any],
    *,
    prediction_split: str = "test",
    input_split: str | None = "train",
    text_embeddings: np.ndarray | None = None,
    image_embeddings: np.ndarray | None = None,
    max_rows: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """A production version's reference: its training data and its predictions on its own test split.

    The rows of `input_split` (inputs and labels; no predictions: scores on training rows are
    too good) followed by the rows of `prediction_split` with `predictions` (one per row of that
    split). Embeddings must cover the rows of both splits, i.e. all of the dataset's rows (the
    embedding cache has them); with embeddings for the prediction split only, pass
    `input_split=None`. `max_rows` samples each part.
    """
    if input_split is not None and input_split == prediction_split:
        raise ValueError(f"input_split and prediction_split are both {input_split!r}")
    for name, values in (("text_embeddings", text_embeddings), ("image_embeddings", image_embeddings)):
        if values is not None and input_split is not None and len(values) != len(dataset.items):
            raise ValueError(
                f"{name} has {len(values)} rows: with input_split={input_split!r} it must have one per dataset "
                f"row ({len(dataset.items)}, the embedding cache's order), or pass input_split=None"
            )
    embeddings = {"text_embeddings": text_embeddings, "image_embeddings": image_embeddings}
    scored = frame_from_dataset(dataset, prediction_split, predictions, **embeddings, max_rows=max_rows, seed=seed)
    if input_split is None:
        return scored
    inputs = frame_from_dataset(dataset, input_split, None, **embeddings, max_rows=max_rows, seed=seed)
    return pd.concat([inputs, scored], ignore_index=True)


# --- from the prediction log --------------------------------------------------------------------


def frame_from_prediction_log(rows: pd.DataFrame, attributes: Mapping[str, AttributeVocab]) -> pd.DataFrame:
    """The monitoring frame of prediction-log rows (`read_prediction_log`'s frame, any subset of
    its rows). `attributes`: the model's attributes with their kind and known values (the vocab
    of the model's dataset, `Dataset.vocab`)."""
    rows = rows.reset_index(drop=True)
    frame = pd.DataFrame(index=rows.index)
    for name in ("product_id", "time"):
        if name in rows:
            frame[name] = rows[name]
    for name in ("title_chars", "description_chars", *IMAGE_STATS):
        if name in rows:
            frame[name] = pd.to_numeric(rows[name], errors="coerce").astype(float)
    if "has_image" in rows:
        frame["has_image"] = rows["has_image"].map(lambda v: np.nan if _missing(v) else float(bool(v))).astype(float)
    for name in EMBEDDINGS:
        if name in rows:
            frame[name] = _vector_cells(list(rows[name]))
    if "predictions" in rows:
        ranked = [_ranked(p) for p in rows["predictions"]]
        for name, column in _prediction_columns(ranked, attributes).items():
            frame[name] = column
    return frame


# --- helpers ------------------------------------------------------------------------------------


def _aligned(values: Any, positions: np.ndarray, keep: np.ndarray, n_all: int, what: str) -> list[Any] | None:
    """`values` (one per split row, or one per dataset row) for the kept rows of the split."""
    if values is None:
        return None
    n = len(values)
    if n == len(positions):
        index = keep
    elif n == n_all:
        index = positions[keep]
    else:
        raise ValueError(f"{what} has {n} rows; expected one per split row ({len(positions)}) or dataset row ({n_all})")
    return [values[int(i)] for i in index]


def _vector_cells(values: Sequence[Any]) -> list[np.ndarray | None]:
    cells: list[np.ndarray | None] = []
    for v in values:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            cells.append(None)
        else:
            cells.append(np.asarray(v, dtype=np.float32).ravel())
    return cells


def _title_names(titles: Sequence[str], vocab: Mapping[str, AttributeVocab]) -> dict[str, list[float]]:
    columns = {}
    for name, attr in vocab.items():
        values = sorted({v.strip() for v in attr.values if v.strip()}, key=len, reverse=True)
        if not values:
            continue
        pattern = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(v) for v in values) + r")(?!\w)", re.IGNORECASE)
        columns[name] = [float(pattern.search(t) is not None) for t in titles]
    return columns


def _image_columns(paths: Sequence[Any]) -> dict[str, list[float]]:
    columns: dict[str, list[float]] = {name: [] for name in ("has_image", *IMAGE_STATS)}
    for given in paths:
        path = given if isinstance(given, str) and given else None  # None / NaN: no image
        summary: dict[str, Any] = {}
        if path is not None:
            try:
                image = load_image(path)
                if image is not None:
                    summary = image_summary(image)
            except Exception as e:  # ingest read every image once; one gone since is a missing statistic
                log.warning("monitoring: could not read image %s: %s", path, e)
        columns["has_image"].append(float(path is not None))
        for name in IMAGE_STATS:
            columns[name].append(float(summary[name]) if name in summary else np.nan)
    return columns


def _ranked(prediction: Any) -> list[dict[str, Any]]:
    """One product's predictions as log-style entries `{attribute, value, score, published}`, in rank order."""
    if prediction is None:
        return []
    if isinstance(prediction, Mapping):
        attributes = prediction.get("attributes", prediction)
        return [
            {"attribute": name, **entry}
            for name, attr in attributes.items()
            if isinstance(attr, Mapping)
            for entry in attr.get("values", [])
        ]
    return [dict(entry) for entry in prediction]  # the log's list of structs


def _prediction_columns(
    ranked: Sequence[Sequence[Mapping[str, Any]]], vocab: Mapping[str, AttributeVocab]
) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {}
    for name, attr in vocab.items():
        top, published, score = [], [], []
        per_value: dict[str, list[float]] = {v: [] for v in attr.values}
        for entries in ranked:
            mine = [e for e in entries if e.get("attribute") == name]
            if not mine:
                top.append(None)
                published.append(np.nan)
                score.append(np.nan)
                for column in per_value.values():
                    column.append(np.nan)
                continue
            top.append(str(mine[0]["value"]))
            score.append(float(mine[0]["score"]))
            if attr.kind == "multilabel":
                chosen = {str(e["value"]) for e in mine if e.get("published")}
                published.append(float(bool(chosen)))
                for value, column in per_value.items():
                    column.append(float(value in chosen))
            else:
                published.append(float(bool(mine[0].get("published"))))
        if attr.kind == "multilabel":
            for value, column in per_value.items():
                columns[f"pred:{name}={value}"] = column
        else:
            columns[f"pred:{name}"] = top
        columns[f"published:{name}"] = published
        columns[f"score:{name}"] = score
    return columns


def _label_columns(rows: pd.DataFrame, vocab: Mapping[str, AttributeVocab]) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {}
    for name, attr in vocab.items():
        if name not in rows:
            continue
        labels = rows[name].tolist()
        if attr.kind == "multilabel":
            for value in attr.values:
                columns[f"label:{name}={value}"] = [
                    np.nan if cell is None else float(value in cell) for cell in (_label_list(c) for c in labels)
                ]
        else:
            columns[f"label:{name}"] = [None if _missing(c) else str(c) for c in labels]
    return columns


def _label_list(cell: Any) -> list[str] | None:
    if cell is None or (isinstance(cell, float) and np.isnan(cell)):
        return None
    return [str(v) for v in cell]


def _missing(cell: Any) -> bool:
    return cell is None or (isinstance(cell, float) and np.isnan(cell))
