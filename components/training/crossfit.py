"""Cross-fitting: probabilities for every train product from a model that never saw its label.

The train products are cut into `folds` folds; a model trains on the other folds and scores each
fold in turn. Confident learning (label_noise.py) judges labels by these probabilities, and
stacking (stacking.py) learns its combiner on them, so neither ever sees in-sample predictions.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from components.catalog.dataset import Dataset
from components.training.config import TrainConfig
from components.training.trainer import train


def out_of_sample_probabilities(
    dataset: Dataset, config: TrainConfig, work_dir: str | Path, folds: int = 4, seed: int = 0
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(train row positions, attribute -> their out-of-fold probabilities)."""
    split = dataset.items["split"].to_numpy()
    rows = np.flatnonzero(split == "train")
    fold = np.random.default_rng(seed).permutation(len(rows)) % folds
    probs: dict[str, np.ndarray] = {}
    for k in range(folds):
        # Fold k plays validation (and is scored), the other train folds train; the rest sits out.
        items = dataset.items.copy()
        items["split"] = "unused"
        items.iloc[rows[fold != k], items.columns.get_loc("split")] = "train"
        items.iloc[rows[fold == k], items.columns.get_loc("split")] = "validation"
        result = train(config, dataclasses.replace(dataset, items=items), Path(work_dir) / f"fold{k}", progress=False)
        for name, p in result.validation_probs.items():
            probs.setdefault(name, np.zeros((len(rows), p.shape[1]), dtype=np.float32))[fold == k] = p
    return rows, probs
