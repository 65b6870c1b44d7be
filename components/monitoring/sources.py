"""Where the two sides of a drift report come from, for a registered model.

- `model_reference`: the model's own training dataset (inputs and labels of its train split) and
  its predictions on its test split, with the pooled embeddings of the embedding cache;
- `dataset_window`: a newer catalog version, every row scored by the model (with labels);
- `log_window`: the serving prediction log over a time window.

Embeddings come from the embedding cache for frozen encoders (the same vectors the endpoint logs);
a model trained with its encoders has no cached vectors, and its reports leave embeddings out.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from components.catalog.dataset import AttributeVocab, Dataset
from components.evaluation.evaluate import predict_split
from components.features.cache import cached_encodings
from components.inference.predict import describe
from components.inference.prediction_log import read_prediction_log
from components.models.io import load_meta, load_model, load_thresholds
from components.monitoring.frames import frame_from_dataset, frame_from_prediction_log, reference_frame


def _scored(model_dir: Path | str, dataset: Dataset, split: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The model's predictions on `split` (`describe`'s form) and the embeddings of every dataset row."""
    model = load_model(model_dir)
    predictions = describe(model, load_thresholds(model_dir), predict_split(model, model_dir, dataset, split))
    embeddings: dict[str, Any] = {}
    if not load_meta(model_dir)["includes_encoders"]:
        enc = cached_encodings(dataset, model.text_encoder, model.image_encoder, model.needs_tokens, progress=False)
        embeddings = {"text_embeddings": enc.text.float().numpy(), "image_embeddings": enc.image.float().numpy()}
    return predictions, embeddings


def model_reference(
    model_dir: Path | str, dataset: Dataset, max_rows: int | None = None, seed: int = 0
) -> pd.DataFrame:
    """The reference of a model trained on `dataset`: train-split inputs, test-split predictions."""
    predictions, embeddings = _scored(model_dir, dataset, "test")
    return reference_frame(dataset, predictions, **embeddings, max_rows=max_rows, seed=seed)


def dataset_window(model_dir: Path | str, dataset: Dataset, max_rows: int | None = None, seed: int = 0) -> pd.DataFrame:
    """A catalog version as the current window: every row, scored by the model, with its labels."""
    predictions, embeddings = _scored(model_dir, dataset, "all")
    return frame_from_dataset(dataset, "all", predictions, **embeddings, max_rows=max_rows, seed=seed)


def log_window(
    model_name: str,
    attributes: dict[str, AttributeVocab],
    since: datetime,
    until: datetime | None = None,
    home: Path | str | None = None,
) -> pd.DataFrame:
    """The prediction log of `model_name` with since <= time (< until) as a monitoring frame."""
    rows = read_prediction_log(model_name, since=since, home=home)
    if until is not None and len(rows):
        end = pd.Timestamp(until)
        rows = rows[pd.to_datetime(rows["time"], utc=True) < (end.tz_localize("UTC") if end.tzinfo is None else end)]
    return frame_from_prediction_log(rows, attributes)
