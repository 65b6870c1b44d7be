"""Per-attribute metrics: accuracy, F1s, recall at 95% precision, per-value thresholds.

Everything ranks by score and cuts only between *different* scores: a published
threshold cannot separate products with the same score, so tied items are
either all in or all out of a prefix.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from sklearn.metrics import f1_score

Kind = Literal["multiclass", "multilabel"]

# Precisions such as 19/20 must count as reaching 0.95 despite float rounding.
_EPS = 1e-12


def _cuts(scores: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (correct, size, score) at each cut between distinct scores, best score first."""
    scores = np.asarray(scores, dtype=float).ravel()
    correct = np.asarray(correct, dtype=bool).ravel()
    order = np.argsort(-scores, kind="stable")
    s, c = scores[order], correct[order]
    cum_correct = np.cumsum(c)
    # A cut is allowed after position i only when the next score differs (or at the end).
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True]) if s.size else np.array([], dtype=int)
    return cum_correct[ends].astype(float), (ends + 1).astype(float), s[ends]


def _best_cut(cum_correct: np.ndarray, size: np.ndarray, target: float) -> int | None:
    """Index of the largest prefix with precision >= target, or None."""
    ok = np.flatnonzero(cum_correct / np.maximum(size, 1) >= target - _EPS)
    return int(ok[-1]) if ok.size else None


def r_at_p(scores: np.ndarray, correct: np.ndarray, n_positive: int, target: float = 0.95) -> float:
    """Recall of the largest score-ranked prefix whose precision is >= target (0.0 if none)."""
    if n_positive <= 0:
        return 0.0
    cum_correct, size, _ = _cuts(scores, correct)
    best = _best_cut(cum_correct, size, target)
    return 0.0 if best is None else float(cum_correct[best] / n_positive)


def score_threshold(scores: np.ndarray, correct: np.ndarray, target: float = 0.95) -> float | None:
    """The lowest score whose prefix keeps precision >= target (None: no prefix does)."""
    cum_correct, size, cut_scores = _cuts(scores, correct)
    best = _best_cut(cum_correct, size, target)
    return None if best is None else float(cut_scores[best])


def precision_recall_points(scores: np.ndarray, correct: np.ndarray, n_positive: int) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) at every distinct-score cut, highest threshold first."""
    cum_correct, size, _ = _cuts(scores, correct)
    recall = cum_correct / n_positive if n_positive > 0 else np.zeros_like(cum_correct)
    return cum_correct / np.maximum(size, 1), recall


def _f1s(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    return {
        f"f1_{avg}": float(f1_score(y_true, y_pred, average=avg, zero_division=0))
        for avg in ("micro", "macro", "weighted")
    }


def _empty(accuracy: float | None) -> dict[str, float | None]:
    # No labelled rows: nothing to measure; zeros keep the report's float fields valid.
    return {"accuracy": accuracy, "f1_micro": 0.0, "f1_macro": 0.0, "f1_weighted": 0.0, "r_at_p95": 0.0, "n": 0}


def multiclass_metrics(probs: np.ndarray, y: np.ndarray, target: float = 0.95) -> dict[str, float | None]:
    """Softmax attribute: argmax prediction; rows with y == -1 are ignored."""
    probs, y = np.asarray(probs, dtype=float), np.asarray(y).astype(int)
    keep = y >= 0
    probs, y = probs[keep], y[keep]
    if y.size == 0:
        return _empty(None)
    pred = probs.argmax(axis=1)
    correct = pred == y
    return {
        "accuracy": float(correct.mean()),
        **_f1s(y, pred),
        "r_at_p95": r_at_p(*ranking(probs, y, "multiclass"), target),
        "n": int(y.size),
    }


def _labelled_rows(Y: np.ndarray) -> np.ndarray:
    # Unlabelled rows are all -1; any negative entry means "not labelled" (never a negative).
    return (Y >= 0).all(axis=1)


def multilabel_metrics(
    probs: np.ndarray, Y: np.ndarray, target: float = 0.95, threshold: float = 0.5
) -> dict[str, float | None]:
    """Sigmoid attribute: predict every value with score >= threshold; R@P over (product, value) pairs."""
    probs, Y = np.asarray(probs, dtype=float), np.asarray(Y).astype(int)
    keep = _labelled_rows(Y)
    probs, Y = probs[keep], Y[keep]
    if Y.shape[0] == 0:
        return _empty(None)
    pred = (probs >= threshold).astype(int)
    return {
        "accuracy": None,  # exact-set accuracy is not comparable with multiclass accuracy
        **_f1s(Y, pred),
        "r_at_p95": r_at_p(*ranking(probs, Y, "multilabel"), target),
        "n": int(Y.shape[0]),
    }


def ranking(probs: np.ndarray, labels: np.ndarray, kind: Kind) -> tuple[np.ndarray, np.ndarray, int]:
    """(scores, correct, n_positive) as R@P ranks them, over labelled rows: one top-1 score per
    product (multiclass; each has exactly one true value) or every (product, value) pair (multilabel)."""
    probs, labels = np.asarray(probs, dtype=float), np.asarray(labels).astype(int)
    if kind == "multiclass":
        keep = labels >= 0
        p, y = probs[keep], labels[keep]
        return p.max(axis=1), p.argmax(axis=1) == y, int(y.size)
    keep = _labelled_rows(labels)
    p, truth = probs[keep], labels[keep] == 1
    return p.ravel(), truth.ravel(), int(truth.sum())


def attribute_metrics(
    probs: np.ndarray, labels: np.ndarray, kind: Kind, target: float = 0.95, threshold: float = 0.5
) -> dict[str, float | None]:
    if kind == "multiclass":
        return multiclass_metrics(probs, labels, target)
    if kind == "multilabel":
        return multilabel_metrics(probs, labels, target, threshold)
    raise ValueError(f"unknown attribute kind {kind!r}")


def value_thresholds(probs: np.ndarray, labels: np.ndarray, kind: Kind, target: float = 0.95) -> list[float | None]:
    """Per value, the lowest score keeping precision >= target on these rows (None: never publish)."""
    probs, labels = np.asarray(probs, dtype=float), np.asarray(labels).astype(int)
    if kind == "multiclass":
        keep = labels >= 0
        probs, labels = probs[keep], labels[keep]
        pred = probs.argmax(axis=1)
    elif kind == "multilabel":
        keep = _labelled_rows(labels)
        probs, labels = probs[keep], labels[keep]
    else:
        raise ValueError(f"unknown attribute kind {kind!r}")

    out: list[float | None] = []
    for c in range(probs.shape[1]):
        if kind == "multiclass":
            # Only products whose top value is c would ever publish c.
            rows = pred == c
            scores, correct = probs[rows, c], labels[rows] == c
        else:
            scores, correct = probs[:, c], labels[:, c] == 1
        cum_correct, size, cut_scores = _cuts(scores, correct)
        best = _best_cut(cum_correct, size, target)
        out.append(None if best is None else float(cut_scores[best]))
    return out


def modality_weight_stats(weights: np.ndarray) -> dict[str, float]:
    """Summary of image-modality weights; NaN statistics (n = 0) when there are none."""
    w = np.asarray(weights, dtype=float).ravel()
    if w.size == 0:
        nan = float("nan")
        return {k: nan for k in ("mean", "std", "median", "q25", "q75", "min", "max")} | {"n": 0}
    q25, median, q75 = np.quantile(w, [0.25, 0.5, 0.75])
    return {
        "mean": float(w.mean()),
        "std": float(w.std()),
        "median": float(median),
        "q25": float(q25),
        "q75": float(q75),
        "min": float(w.min()),
        "max": float(w.max()),
        "n": int(w.size),
    }
