"""Champion/challenger: is the challenger worse than the champion beyond noise, on the same products?

Both models score the same split of the newest dataset; the test products are resampled with
replacement (the same resample for both models, so the difference is paired) and the primary
metric is recomputed on each resample. The challenger may replace the champion only when the
lower end of the interval of (challenger - champion) lies above `-margin`: a difference the test
set cannot tell from noise does not block it, a real loss does.

    cmp = compare_models(challenger_dir, champion_dir, dataset)   # split "test", r_at_p95_mean
    cmp = compare_models(..., exclude=champion_training_ids)        # only products neither model saw

Ingestion keeps a product's split across dataset versions (components/catalog/ingest.py), so the
newest test split holds no product the champion trained on; `exclude` makes sure of it when the
champion came from another dataset. Extraction models are compared the same way, on their values
(components/evaluation/extraction.py: value R@P95 or value F1 per attribute, then the mean).
    cmp.promote, cmp.interval, cmp.describe()
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from components.catalog.dataset import Dataset
from components.evaluation.evaluate import predict_split
from components.evaluation.extraction import ValueOutcomes
from components.evaluation.metrics import r_at_p, ranking
from components.features.preprocess import encode_labels
from components.models.io import load_model, model_task

METRICS = ("r_at_p95_mean", "f1_macro_mean")  # means over attributes, as the registry stores them


class Comparison(BaseModel):
    """The decision's figures: both scores on the same products, the paired interval, the rule."""

    model_config = ConfigDict(frozen=True)

    metric: str
    dataset: str  # name and version
    split: str
    products: int
    excluded: int = 0  # products of the split left out: the production model trained on them
    candidate: float
    production: float
    interval: tuple[float, float]  # of candidate - production, at `confidence`
    confidence: float
    resamples: int
    margin: float
    promote: bool

    @property
    def difference(self) -> float:
        return self.candidate - self.production

    def describe(self) -> str:
        low, high = self.interval
        verdict = "not worse beyond noise" if self.promote else "worse beyond noise"
        left_out = f", {self.excluded} left out (the production model trained on them)" if self.excluded else ""
        return (
            f"{self.metric} on {self.dataset} {self.split} ({self.products} products{left_out}): candidate {self.candidate:.4f}, "
            f"production {self.production:.4f}, difference {self.difference:+.4f}, {self.confidence:.0%} paired "
            f"bootstrap interval [{low:+.4f}, {high:+.4f}] ({self.resamples} resamples); lower bound "
            f"{'>' if self.promote else '<='} -{self.margin:g}: {verdict}"
        )


def _attribute_metric(probs: np.ndarray, labels: np.ndarray, kind: str, metric: str) -> float | None:
    """One attribute's `metric` on the given rows, as `attribute_metrics` defines it (None: no labelled row)."""
    if metric == "r_at_p95":
        scores, correct, n_positive = ranking(probs, labels, kind)
        return r_at_p(scores, correct, n_positive, 0.95) if n_positive else None
    # f1_macro, as sklearn's average="macro" with zero_division=0: over the values present in truth or
    # prediction (multiclass) or over every value (multilabel); counted with numpy for speed.
    if kind == "multiclass":
        keep = labels >= 0
        if not keep.any():
            return None
        y, pred, k = labels[keep], probs[keep].argmax(1), probs.shape[1]
        tp = np.bincount(y[y == pred], minlength=k)
        n_true, n_pred = np.bincount(y, minlength=k), np.bincount(pred, minlength=k)
        present = (n_true + n_pred) > 0
    else:
        keep = (labels >= 0).all(1)
        if not keep.any():
            return None
        truth, pred = labels[keep] == 1, probs[keep] >= 0.5
        tp, n_true, n_pred = (truth & pred).sum(0), truth.sum(0), pred.sum(0)
        present = np.ones(probs.shape[1], dtype=bool)
    denominator = n_true + n_pred
    f1 = np.divide(2 * tp, denominator, out=np.zeros(len(tp)), where=denominator > 0)
    return float(f1[present].mean())


def _mean_metric(
    probs: dict[str, np.ndarray], labels: dict[str, np.ndarray], kinds: dict[str, str], metric: str, rows: np.ndarray
) -> float:
    values = [_attribute_metric(probs[a][rows], labels[a][rows], kinds[a], metric) for a in probs]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else float("nan")


def _scorer(model_dir: Path | str, dataset: Dataset, split: str, metric: str) -> Callable[[np.ndarray], float]:
    """`metric` (per attribute, then the mean) of the model on given positions of the split's rows:
    a classifier's probabilities, or an extraction model's values by the counting rule."""
    if model_task(model_dir) == "extraction":
        outcomes = ValueOutcomes.of_model(model_dir, dataset, split)
        return lambda rows: outcomes.mean_metric(metric, rows)
    model = load_model(model_dir)
    pred = predict_split(model, model_dir, dataset, split)
    labels = {k: v.numpy() for k, v in encode_labels(dataset.split(split), model.vocab).items()}
    kinds = {s.name: s.kind for s in model.specs}
    return lambda rows: _mean_metric(pred.probs, labels, kinds, metric, rows)


def compare_models(
    candidate_dir: Path | str,
    production_dir: Path | str,
    dataset: Dataset,
    split: str = "test",
    metric: str = "r_at_p95_mean",
    margin: float = 0.002,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    exclude: set[str] | None = None,
) -> Comparison:
    """Score both models on `split` of `dataset` and decide by the paired bootstrap interval, on
    the split's products not in `exclude` (e.g. those the production model trained on)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r} for a comparison; use one of {', '.join(METRICS)}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0 (a tolerated loss), got {margin}")
    per_attribute = metric.removesuffix("_mean")
    cand, prod = (_scorer(d, dataset, split, per_attribute) for d in (candidate_dir, production_dir))
    ids = dataset.split(split)["id"].astype(str)
    kept = np.flatnonzero(~ids.isin(exclude or set()).to_numpy())
    n = len(kept)
    if n == 0:
        raise ValueError(
            f"{dataset.name} {dataset.version} {split}: every product is one the production model trained on; "
            "nothing to compare on"
        )
    cand_score, prod_score = cand(kept), prod(kept)
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples)
    for r in range(resamples):
        rows = kept[rng.integers(0, n, n)]  # one resample of the products for both models: a paired difference
        diffs[r] = cand(rows) - prod(rows)
    tail = 100 * (1 - confidence) / 2
    low, high = (float(x) for x in np.nanpercentile(diffs, [tail, 100 - tail]))
    return Comparison(
        metric=metric,
        dataset=f"{dataset.name} {dataset.version}",
        split=split,
        products=n,
        excluded=len(ids) - n,
        candidate=cand_score,
        production=prod_score,
        interval=(low, high),
        confidence=confidence,
        resamples=resamples,
        margin=margin,
        promote=bool(low > -margin),
    )
