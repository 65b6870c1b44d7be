"""A value-extraction model scored on span rows or on a dataset split, by the benchmarks' rules."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.catalog.dataset import Dataset
from components.catalog.spans import SpanRow, dataset_rows
from components.evaluation.extraction_metrics import OUTCOMES, extraction_report, outcome, prf
from components.evaluation.metrics import r_at_p
from components.inference.extraction import best_values, dataset_features, extract, split_features
from components.models.io import load_meta, load_model
from components.models.tagger import Extractor


def score_rows(model: Extractor, rows: list[SpanRow], features=None, allowed=None) -> dict[str, Any]:
    """The model's best value per attribute on `rows`, with scores and the benchmarks' report
    (`allowed`: per category, the attributes decoded; see `extract`)."""
    found = extract(model, [r.text for r in rows], [r.category for r in rows], allowed, features=features)
    best = [best_values(f) for f in found]
    predicted = [{a: s.value for a, s in b.items()} for b in best]
    confidence = [{a: s.score for a, s in b.items()} for b in best]
    spans = [[(s.attribute, s.start, s.end) for s in f] for f in found]
    return {
        "predicted": predicted,
        "confidence": confidence,
        "report": extraction_report(rows, predicted, confidence, spans),
    }


def _scored_split(model_dir: str | Path, dataset: Dataset, split: str) -> tuple[list[SpanRow], dict[str, Any]]:
    model = load_model(model_dir)
    if not isinstance(model, Extractor):
        raise ValueError(f"{model_dir} is not an extraction model")
    attributes = load_meta(model_dir).get("attributes") or model.attributes
    rows = dataset_rows(dataset.split(split), attributes, model.token_edges)
    if not rows:
        raise ValueError(f"{dataset.path}: split {split!r} has no rows")
    features = split_features(dataset_features(model.config, dataset), dataset, split)
    return rows, score_rows(model, rows, features)


def evaluate_extraction(model_dir: str | Path, dataset: Dataset, split: str = "test") -> dict[str, Any]:
    """A saved extraction model on a dataset split: the named values of a value-extraction catalog,
    or distant labels, of the attributes it was trained on (model folder's config.json), the frozen encoders' outputs from the embedding cache. The
    benchmarks' report plus the registry's means over attributes (`r_at_p95_mean`: value R@P95,
    `f1_macro_mean`: value F1), as `ValueOutcomes.mean_metric` computes them."""
    rows, scored = _scored_split(model_dir, dataset, split)
    outcomes = ValueOutcomes.of(rows, scored)
    everything = np.arange(len(rows))
    return {
        **scored["report"],
        "r_at_p95_mean": outcomes.mean_metric("r_at_p95", everything),
        "f1_macro_mean": outcomes.mean_metric("f1_macro", everything),
    }


@dataclass
class ValueOutcomes:
    """Per product and attribute, the counting rule's outcome and the predicted value's score:
    what the champion/challenger bootstrap resamples (components/evaluation/comparison.py)."""

    attributes: list[str]
    outcome: np.ndarray  # (N, A) index into OUTCOMES; -1 where the product does not name the attribute
    score: np.ndarray  # (N, A) the predicted value's score; nan where none is predicted

    @classmethod
    def of(cls, rows: list[SpanRow], scored: dict[str, Any]) -> ValueOutcomes:
        attributes = sorted({a for r in rows for a in r.values})
        out = np.full((len(rows), len(attributes)), -1)
        score = np.full((len(rows), len(attributes)), np.nan)
        for i, (r, pred, conf) in enumerate(zip(rows, scored["predicted"], scored["confidence"], strict=True)):
            for j, a in enumerate(attributes):
                if a in r.values:
                    out[i, j] = OUTCOMES.index(outcome(r.values[a], pred.get(a)))
                    if pred.get(a) is not None:
                        score[i, j] = conf[a]
        return cls(attributes, out, score)

    @classmethod
    def of_model(cls, model_dir: str | Path, dataset: Dataset, split: str) -> ValueOutcomes:
        return cls.of(*_scored_split(model_dir, dataset, split))

    def mean_metric(self, metric: str, rows: np.ndarray) -> float:
        """Mean over attributes of value R@P95 (`r_at_p95`) or value F1 (`f1_macro`) on `rows`."""
        values = []
        for j in range(len(self.attributes)):
            o, s = self.outcome[rows, j], self.score[rows, j]
            named = o >= 0
            if not named.any():
                continue
            counts = {name: int((o == k).sum()) for k, name in enumerate(OUTCOMES)}
            if metric == "f1_macro":
                values.append(prf(counts)["f1"])
            elif metric == "r_at_p95":
                given = ~np.isnan(s)
                positives = counts["VN"] + counts["VC"] + counts["VW"]
                values.append(r_at_p(s[given], o[given] == OUTCOMES.index("VC"), positives) if positives else 0.0)
            else:
                raise ValueError(f"unknown metric {metric!r}; use r_at_p95 or f1_macro")
        return float(np.mean(values)) if values else float("nan")
