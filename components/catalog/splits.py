"""Deterministic train / validation / test assignment.

- One multiclass attribute to stratify on: scikit-learn's stratified shuffle split,
  with classes too rare to stratify pooled into one bucket.
- Several attributes, or any multilabel one: iterative stratification
  (Sechidis et al. 2011, via `iterative-stratification`) over the indicator
  matrix of all their values, so every value keeps its share in every split.

Products without a label are spread like any other product.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit
from sklearn.model_selection import StratifiedShuffleSplit

from components.catalog.spec import AttributeSpec, SplitSpec

SPLITS = ("train", "validation", "test")
_RARE = "__rare__"
_MISSING = "__missing__"


def assign_splits(labels: pd.DataFrame, attributes: Sequence[AttributeSpec], split: SplitSpec) -> np.ndarray:
    """Return an array of 'train' / 'validation' / 'test', one per row of `labels`.

    `labels` has one column per attribute: a string (multiclass), a list of
    strings (multilabel) or None where the product has no label.
    """
    n = len(labels)
    out = np.full(n, "train", dtype=object)
    if n == 0:
        return out
    names = split.stratify_on or [a.name for a in attributes]
    targets = [a for a in attributes if a.name in names]
    rest = np.arange(n)
    rng_seed = split.seed
    # Carve out test first, then validation from what is left, so changing the
    # validation share never moves a product into or out of the test split.
    for name, share in (("test", split.test), ("validation", split.validation)):
        remaining_share = share / (1.0 - (split.test if name == "validation" else 0.0))
        k = int(round(remaining_share * len(rest)))
        if k == 0 or k >= len(rest):
            continue
        picked = _pick(labels.iloc[rest], targets, k, rng_seed)
        out[rest[picked]] = name
        rest = np.setdiff1d(rest, rest[picked])
        rng_seed += 1
    return out


def _pick(labels: pd.DataFrame, targets: Sequence[AttributeSpec], k: int, seed: int) -> np.ndarray:
    """Positions (into `labels`) of a stratified sample of size k."""
    n = len(labels)
    x = np.zeros((n, 1))
    if len(targets) == 1 and targets[0].kind == "multiclass":
        y = _pool_rare(labels[targets[0].name].fillna(_MISSING).astype(str).to_numpy())
        if len(set(y)) > 1 and min(k, n - k) >= len(set(y)):
            splitter = StratifiedShuffleSplit(n_splits=1, test_size=k, random_state=seed)
            _, picked = next(splitter.split(x, y))
            return np.sort(picked)
    else:
        y = _indicator_matrix(labels, targets)
        if y.shape[1] > 0:
            splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=k / n, random_state=seed)
            _, picked = next(splitter.split(x, y))
            return np.sort(picked)
    # Nothing to stratify on (a single class, or too few rows): a seeded shuffle.
    return np.sort(np.random.default_rng(seed).permutation(n)[:k])


def _pool_rare(y: np.ndarray, min_count: int = 3) -> np.ndarray:
    """Classes with fewer than `min_count` members cannot be spread over splits; pool them."""
    values, counts = np.unique(y, return_counts=True)
    rare = set(values[counts < min_count])
    if not rare:
        return y
    pooled = np.array([_RARE if v in rare else v for v in y], dtype=object)
    if (pooled == _RARE).sum() < min_count:
        # The pool itself is too small: give it to the largest class.
        pooled[pooled == _RARE] = values[np.argmax(counts)]
    return pooled


def _indicator_matrix(labels: pd.DataFrame, targets: Sequence[AttributeSpec]) -> np.ndarray:
    columns = []
    for attr in targets:
        col = labels[attr.name]
        values = sorted({v for cell in col for v in _as_list(cell)})
        index = {v: j for j, v in enumerate(values)}
        block = np.zeros((len(col), len(values)), dtype=np.int8)
        for i, cell in enumerate(col):
            for v in _as_list(cell):
                block[i, index[v]] = 1
        columns.append(block)
    return np.concatenate(columns, axis=1) if columns else np.zeros((len(labels), 0))


def _as_list(cell) -> list[str]:
    if cell is None or (isinstance(cell, float) and np.isnan(cell)):
        return []
    if isinstance(cell, str):
        return [cell]
    return list(cell)
