"""Drift monitoring with Evidently 0.7: a reference frame (a production version's training data and
its predictions on its test split) against a current window (prediction-log rows, or a new catalog
version scored by the production model); one check per input statistic, embedding, predicted-value
distribution and label distribution, each with a pinned test; a drift decision; Evidently's
snapshot and HTML on disk. Start at report.py; config.py says which tests and why.

    from components.monitoring import reference_frame, frame_from_prediction_log, run_drift_report
    reference = reference_frame(dataset, test_predictions, text_embeddings=..., image_embeddings=...)
    current = frame_from_prediction_log(read_prediction_log("demo", since), dataset.vocab)
    report = run_drift_report(reference, current, out_dir)
"""

from components.monitoring.config import DecisionRule, DriftTest, EmbeddingDriftTest, MonitoringConfig
from components.monitoring.frames import (
    column_info,
    frame_from_dataset,
    frame_from_prediction_log,
    reference_frame,
)
from components.monitoring.report import (
    Check,
    DriftReport,
    InsufficientData,
    SkippedCheck,
    decide,
    run_drift_report,
    sample_frame,
)
from components.monitoring.sources import dataset_window, log_window, model_reference

__all__ = [
    "Check",
    "DecisionRule",
    "DriftReport",
    "DriftTest",
    "EmbeddingDriftTest",
    "InsufficientData",
    "MonitoringConfig",
    "SkippedCheck",
    "column_info",
    "dataset_window",
    "log_window",
    "model_reference",
    "decide",
    "frame_from_dataset",
    "frame_from_prediction_log",
    "reference_frame",
    "run_drift_report",
    "sample_frame",
]
