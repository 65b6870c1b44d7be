"""What every part of the quality benchmark shares: paths, attributes, metrics, the log line."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np

from components.evaluation.metrics import attribute_metrics

ROOT = Path(__file__).resolve().parents[1]
ATTRIBUTES = ["articleType", "baseColour", "gender", "season", "usage"]
SPEC = ROOT / "configs" / "catalogs" / "fashion.yaml"
RESULTS = ROOT / "bench" / "results"
METRICS = ("accuracy", "f1_macro", "f1_weighted", "r_at_p95")


def log(msg: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def metrics_of(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """The reported metrics of one attribute's test (or validation) probabilities."""
    m = attribute_metrics(probs, y, "multiclass")
    return {k: m[k] for k in (*METRICS, "n")}
