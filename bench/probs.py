"""Each row's validation and test probabilities, stored beside its model folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.catalog.dataset import Dataset
from components.evaluation.evaluate import predict_split
from components.models.io import load_model


def probs_path(model_dir: Path) -> Path:
    """Beside each row's model folder (not in it, so exports stay clean): its validation and test probabilities."""
    return Path(model_dir).with_name(Path(model_dir).name + ".probs.npz")


def save_probs(model_dir: Path, validation: dict[str, np.ndarray], test: dict[str, np.ndarray]) -> None:
    np.savez_compressed(
        probs_path(model_dir),
        **{f"validation.{a}": p for a, p in validation.items()},
        **{f"test.{a}": p for a, p in test.items()},
    )


def row_probs(model_dir: Path, ds: Dataset) -> dict[str, dict[str, np.ndarray]]:
    """{"validation": {attribute: probs}, "test": ...} of a row's model (computed if an older run left none)."""
    path = probs_path(model_dir)
    if not path.is_file():
        model = load_model(model_dir)
        save_probs(model_dir, *(predict_split(model, model_dir, ds, s).probs for s in ("validation", "test")))
    out: dict[str, dict[str, np.ndarray]] = {"validation": {}, "test": {}}
    for key, p in np.load(path).items():
        s, _, a = key.partition(".")
        out[s][a] = p
    return out
