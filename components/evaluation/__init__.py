"""Evaluation: per-attribute metrics, per-value publishing thresholds and reports."""

from components.evaluation.metrics import (
    attribute_metrics,
    modality_weight_stats,
    multiclass_metrics,
    multilabel_metrics,
    precision_recall_points,
    r_at_p,
    ranking,
    value_thresholds,
)
from components.evaluation.report import AttributeReport, EvaluationReport, write_report

__all__ = [
    "AttributeReport",
    "EvaluationReport",
    "attribute_metrics",
    "modality_weight_stats",
    "multiclass_metrics",
    "multilabel_metrics",
    "precision_recall_points",
    "ranking",
    "r_at_p",
    "value_thresholds",
    "write_report",
]
