"""A value-extraction model scored on span rows or on a dataset split, by the benchmarks' rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.catalog.dataset import Dataset
from components.catalog.spans import SpanRow, distant_rows
from components.evaluation.extraction_metrics import extraction_report
from components.inference.extraction import best_values, dataset_features, extract, split_features
from components.models.io import load_meta, load_model
from components.models.tagger import ExtractionModel


def score_rows(model: ExtractionModel, rows: list[SpanRow], features=None) -> dict[str, Any]:
    """The model's best value per attribute on `rows`, with scores and the benchmarks' report."""
    found = extract(model, [r.text for r in rows], [r.category for r in rows], features=features)
    best = [best_values(f) for f in found]
    predicted = [{a: s.value for a, s in b.items()} for b in best]
    confidence = [{a: s.score for a, s in b.items()} for b in best]
    spans = [[(s.attribute, s.start, s.end) for s in f] for f in found]
    return {
        "predicted": predicted,
        "confidence": confidence,
        "report": extraction_report(rows, predicted, confidence, spans),
    }


def evaluate_extraction(model_dir: str | Path, dataset: Dataset, split: str = "test") -> dict[str, Any]:
    """A saved extraction model on a dataset split: distant labels of the attributes it was trained
    on (model folder's config.json), the frozen encoders' outputs from the embedding cache."""
    model = load_model(model_dir)
    if not isinstance(model, ExtractionModel):
        raise ValueError(f"{model_dir} is not an extraction model")
    attributes = load_meta(model_dir).get("attributes") or model.attributes
    rows = distant_rows(dataset.split(split), attributes)
    if not rows:
        raise ValueError(f"{dataset.path}: split {split!r} has no rows")
    features = split_features(dataset_features(model.config, dataset), dataset, split)
    return score_rows(model, rows, features)["report"]
