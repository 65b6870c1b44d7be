"""Evaluate a saved model on a dataset split and write the report (JSON, markdown, plots)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.catalog.dataset import Dataset
from components.evaluation.metrics import attribute_metrics, modality_weight_stats, ranking
from components.evaluation.report import AttributeReport, EvaluationReport, write_report
from components.features.cache import cached_encodings
from components.features.preprocess import encode_labels
from components.inference.predict import Predictions, predict_items
from components.models.io import load_meta, load_model
from components.models.model import AttributeModel


def evaluate(
    model_dir: str | Path,
    dataset: Dataset,
    split: str = "test",
    out_dir: str | Path | None = None,
    target: float = 0.95,
    progress: bool = False,
) -> tuple[EvaluationReport, dict[str, Path]]:
    """Metrics per attribute on `split`; writes the report into `out_dir` (default MODEL_DIR/eval-<split>)."""
    model = load_model(model_dir)
    rows = dataset.split(split)
    if rows.empty:
        raise ValueError(f"{dataset.path}: split {split!r} has no rows")
    pred = predict_split(model, model_dir, dataset, split, progress)
    labels = {k: v.numpy() for k, v in encode_labels(rows, model.vocab).items()}
    report, curves, weights = build_report(model, pred, labels, str(model_dir), str(dataset.path), split, target)
    out_dir = Path(out_dir) if out_dir else Path(model_dir) / f"eval-{split}"
    return report, write_report(report, out_dir, curves, weights, target)


def predict_split(
    model: AttributeModel, model_dir, dataset: Dataset, split: str, progress: bool = False
) -> Predictions:
    """Scores of a saved model on a split ("all": every row). Frozen pretrained encoders: their
    outputs are in the embedding cache, no need to run them again; fine-tuned ones run on the rows."""
    if not load_meta(model_dir)["includes_encoders"]:
        enc = cached_encodings(dataset, model.text_encoder, model.image_encoder, model.needs_tokens, progress=progress)
        index = np.arange(len(dataset.items)) if split == "all" else np.flatnonzero(dataset.items["split"] == split)
        return predict_items(model, encodings=enc, index=index)
    return predict_items(model, dataset.split(split))


def build_report(
    model: AttributeModel,
    pred: Predictions,
    labels: dict[str, np.ndarray],
    model_name: str,
    dataset_name: str,
    split: str,
    target: float = 0.95,
):
    """(report, PR curves, image weights per attribute) from predictions and encoded labels."""
    attributes, curves, weights = {}, {}, {}
    for a, spec in enumerate(model.specs):
        probs, y = pred.probs[spec.name], labels[spec.name]
        metrics = attribute_metrics(probs, y, spec.kind, target)
        curves[spec.name] = ranking(probs, y, spec.kind)
        image_weight = None
        if pred.modality_weights is not None:
            w = pred.modality_weights[pred.has_image, a, 1]  # only products that have both modalities
            weights[spec.name] = w
            image_weight = modality_weight_stats(w)
        attributes[spec.name] = AttributeReport(kind=spec.kind, image_weight=image_weight, **metrics)
    report = EvaluationReport(model=model_name, dataset=dataset_name, split=split, attributes=attributes)
    return report, curves, (weights or None)
