"""Value-extraction metrics: the benchmarks' counting rule, exact span F1, R@P95 of values.

Counting rule (AE-110k / OA-Mine as scored by ExtractGPT's pieutils/evaluation.py): for each
product and each attribute it names, one outcome:

    NN  no value expected, none predicted      NV  none expected, one predicted
    VN  a value expected, none predicted       VC  the prediction equals an expected value
    VW  a different value predicted            (values compared after stripping spaces)

micro P = VC / (NV + VC + VW), micro R = VC / (VN + VC + VW), F1 their harmonic mean, summed
over all products and attributes. Comparison is case-sensitive, as in the reference code.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from components.evaluation.metrics import r_at_p, score_threshold

OUTCOMES = ("NN", "NV", "VN", "VC", "VW")


def outcome(expected: Sequence[str], predicted: str | None) -> str:
    """One product-attribute pair's outcome; `expected` empty means no value ("n/a")."""
    targets = [v.strip() for v in expected]
    pred = predicted.strip() if predicted is not None and predicted.strip() else None
    if not targets:
        return "NN" if pred is None else "NV"
    if pred is None:
        return "VN"
    return "VC" if pred in targets else "VW"


def prf(counts: Mapping[str, int]) -> dict[str, float]:
    """Precision, recall, F1 (fractions) from outcome counts; 0 where undefined."""
    vc = counts.get("VC", 0)
    given = counts.get("NV", 0) + vc + counts.get("VW", 0)
    expected = counts.get("VN", 0) + vc + counts.get("VW", 0)
    p = vc / given if given else 0.0
    r = vc / expected if expected else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def value_scores(
    expected: Sequence[Mapping[str, Sequence[str]]], predicted: Sequence[Mapping[str, str | None]]
) -> dict:
    """Micro P/R/F1 and per-attribute scores over products: `expected[i]` maps each attribute the
    product names to its accepted values ([] = none); `predicted[i]` maps attributes to a value
    (missing or None = none). Attributes a product does not name are not counted."""
    if len(expected) != len(predicted):
        raise ValueError(f"{len(expected)} expected rows but {len(predicted)} predicted")
    total: Counter[str] = Counter()
    per_attr: dict[str, Counter[str]] = {}
    for exp, pred in zip(expected, predicted, strict=True):
        for attr, values in exp.items():
            o = outcome(values, pred.get(attr))
            total[o] += 1
            per_attr.setdefault(attr, Counter())[o] += 1
    return {
        "micro": {**prf(total), **{o: total[o] for o in OUTCOMES}},
        "per_attribute": {a: {**prf(c), "n": sum(c.values())} for a, c in sorted(per_attr.items())},
    }


def span_scores(gold: Iterable[Iterable[tuple]], predicted: Iterable[Iterable[tuple]]) -> dict:
    """Exact span (chunk) F1: a predicted (attribute, start, end) counts only when a gold span has
    the same attribute and both offsets. Micro over all and per attribute."""
    tp: Counter[str] = Counter()
    n_gold: Counter[str] = Counter()
    n_pred: Counter[str] = Counter()
    for g, p in zip(gold, predicted, strict=True):
        gs, ps = set(map(tuple, g)), set(map(tuple, p))
        for s in gs:
            n_gold[s[0]] += 1
        for s in ps:
            n_pred[s[0]] += 1
            tp[s[0]] += s in gs

    def f(t: int, ng: int, np_: int) -> dict[str, float]:
        p, r = (t / np_ if np_ else 0.0), (t / ng if ng else 0.0)
        return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}

    attrs = sorted(set(n_gold) | set(n_pred))
    return {
        "micro": f(sum(tp.values()), sum(n_gold.values()), sum(n_pred.values())),
        "per_attribute": {a: f(tp[a], n_gold[a], n_pred[a]) for a in attrs},
    }


def value_ranking(
    expected: Sequence[Mapping[str, Sequence[str]]],
    predicted: Sequence[Mapping[str, str | None]],
    confidence: Sequence[Mapping[str, float]],
) -> tuple[np.ndarray, np.ndarray, int]:
    """(scores, correct, n_positive) over every predicted value, for R@P and thresholds: a value
    is correct when its outcome is VC; positives are the pairs that expect a value."""
    scores, correct, n_pos = [], [], 0
    for exp, pred, conf in zip(expected, predicted, confidence, strict=True):
        for attr, values in exp.items():
            n_pos += bool(values)
            if pred.get(attr) is not None:
                scores.append(conf[attr])
                correct.append(outcome(values, pred[attr]) == "VC")
    return np.asarray(scores, dtype=float), np.asarray(correct, dtype=bool), n_pos


def value_r_at_p(expected, predicted, confidence, target: float = 0.95) -> float:
    """Share of expected values that can be published while `target` of what is published is right."""
    return r_at_p(*value_ranking(expected, predicted, confidence), target)


def value_thresholds(expected, predicted, confidence, target: float = 0.95) -> dict[str, float | None]:
    """Per attribute, the lowest span confidence keeping precision >= target (None: never publish)."""
    out = {}
    for attr in sorted({a for e in expected for a in e}):
        sub = [({attr: e[attr]}, p, c) for e, p, c in zip(expected, predicted, confidence, strict=True) if attr in e]
        scores, correct, _ = value_ranking(*zip(*sub, strict=True)) if sub else (np.array([]), np.array([]), 0)
        out[attr] = score_threshold(scores, correct, target)
    return out


def extraction_report(rows, predicted, confidence, spans) -> dict:
    """Everything the benchmarks report for one model on `rows` (SpanRow: expected values and gold
    spans): value micro P/R/F1 and outcomes by the counting rule, per attribute, attribute-set F1
    (does the product have a value), exact span F1 and value R@P95. `predicted`/`confidence`: one
    value and score per attribute and product; `spans`: every decoded (attribute, start, end)."""
    expected = [r.values for r in rows]
    gold = [[(s.attribute, s.start, s.end) for s in r.spans] for r in rows]
    named = [[s for s in p if s[0] in r.values] for p, r in zip(spans, rows, strict=True)]
    v = value_scores(expected, predicted)
    c = v["micro"]
    tp, fp, fn = c["VC"] + c["VW"], c["NV"], c["VN"]
    return {
        "attribute_f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
        "micro": v["micro"],
        "per_attribute": v["per_attribute"],
        "span_f1": span_scores(gold, named)["micro"]["f1"],
        "value_r_at_p95": value_r_at_p(expected, predicted, confidence),
    }
