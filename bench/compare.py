"""One way of training against another on the same test products: per-attribute metrics and
paired-bootstrap intervals (bench/stacking.py, bench/label_noise.py, bench/defaults.py)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.bootstrap import paired_bootstrap
from bench.common import metrics_of
from components.catalog.dataset import Dataset
from components.evaluation.evaluate import predict_split
from components.features.preprocess import encode_labels
from components.models.io import load_model


def test_labels(ds: Dataset) -> dict[str, np.ndarray]:
    """attribute -> encoded labels of the test products (-1 where missing)."""
    te = np.flatnonzero(ds.items["split"].to_numpy() == "test")
    return {k: v.numpy()[te] for k, v in encode_labels(ds.items, ds.vocab).items()}


def compare_on_test(
    ds: Dataset, model_dirs: dict[str, Path], seconds: dict[str, float], a: str, b: str
) -> tuple[dict[str, Any], dict[str, dict[str, list[float]]]]:
    """Each model's test metrics per attribute (rows: name -> train_seconds, attributes) and the 95%
    intervals of a - b per attribute (the same resampled test products for both)."""
    labels = test_labels(ds)
    probs = {name: predict_split(load_model(d), d, ds, "test").probs for name, d in model_dirs.items()}
    rows = {
        name: {
            "train_seconds": seconds[name],
            "attributes": {k: metrics_of(probs[name][k], labels[k]) for k in ds.vocab},
        }
        for name in model_dirs
    }
    intervals = {k: paired_bootstrap(probs[a][k], probs[b][k], labels[k]) for k in ds.vocab}
    return rows, intervals


def run_record(script: str) -> dict[str, str]:
    """When, where and how a benchmark ran (the header of its results)."""
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPUs",
        "command": f"python bench/{script} " + " ".join(sys.argv[1:]),
    }


def interval(d: list[float]) -> str:
    return f"[{d[0]:+.3f}, {d[1]:+.3f}]"
