"""The targets, checked with paired-bootstrap 95% intervals over the test products."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.common import ATTRIBUTES, log
from bench.probs import row_probs
from bench.selection import best_on_validation, best_single_and_multimodal
from components.catalog.dataset import Dataset


def target_checks(
    results: dict[str, Any], ds: Dataset, labels: dict[str, np.ndarray], tfidf_probs: Path
) -> dict[str, Any]:
    """check_targets on the test probabilities of the rows it compares: the best, the best single-modality
    and multimodal rows (stored beside their models) and TF-IDF+LR (`tfidf_probs`, when there)."""
    rows = results["rows"]
    probs = {
        n: row_probs(Path(rows[n]["model_dir"]), ds)["test"]
        for n in {results["best"], *best_single_and_multimodal(rows)}
        if n
    }
    if tfidf_probs.is_file():
        probs["tfidf_lr"] = dict(np.load(tfidf_probs))
    te = ds.items["split"].to_numpy() == "test"
    log("targets: paired bootstrap over test products")
    return check_targets(results, probs, {a: labels[a][te] for a in ATTRIBUTES})


def paired_bootstrap(
    probs_a: np.ndarray, probs_b: np.ndarray, y: np.ndarray, kind: str = "multiclass", n: int = 500, seed: int = 0
) -> dict[str, list[float]]:
    """95 % interval of metric(a) - metric(b) when the test products are resampled with
    replacement (the same resample for both models): how far the difference is from noise."""
    from sklearn.metrics import f1_score

    from components.evaluation.metrics import attribute_metrics, r_at_p, ranking

    keep = y >= 0 if y.ndim == 1 else (y >= 0).all(axis=1)
    probs_a, probs_b, y = probs_a[keep], probs_b[keep], y[keep]

    def scores(p: np.ndarray, yy: np.ndarray) -> dict[str, float]:  # the two target metrics
        if kind != "multiclass":  # multilabel: attribute_metrics' thresholds at 0.5
            m = attribute_metrics(p, yy, kind)
            return {k: m[k] or 0.0 for k in ("f1_macro", "r_at_p95")}
        return {  # as attribute_metrics computes them, without its other metrics (500 resamples)
            "f1_macro": f1_score(yy, p.argmax(1), average="macro", zero_division=0),
            "r_at_p95": r_at_p(*ranking(p, yy, "multiclass")),
        }

    rng = np.random.default_rng(seed)
    diffs: dict[str, list[float]] = {"f1_macro": [], "r_at_p95": []}
    for _ in range(n):
        i = rng.integers(0, len(y), len(y))
        ma, mb = scores(probs_a[i], y[i]), scores(probs_b[i], y[i])
        for m, d in diffs.items():
            d.append(ma[m] - mb[m])
    return {m: [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))] for m, d in diffs.items()}


# What the data can decide (paired bootstrap over the test products): a row beats another on an
# attribute when the 95% interval of the difference lies above 0 (a win). Where the other row is at
# the ceiling (CEILING or more: gender, ~0.99) no win is possible, so the claim is non-inferiority:
# the interval's lower bound above -MARGIN. A target is met when every attribute is one or the other.
CEILING = 0.98
MARGIN = 0.01


def verdict(ci: list[float], bar: float) -> str:
    """win | non-inferior | tie (the interval holds 0) | loss (it lies below 0)."""
    if ci[0] > 0:
        return "win"
    if bar >= CEILING and ci[0] > -MARGIN:
        return "non-inferior"
    return "tie" if ci[1] >= 0 else "loss"


def _compare(rows, a: str, b: str, metric: str, intervals) -> dict[str, Any]:
    """Row a minus row b on `metric` per attribute; `intervals(a, b, attribute)` gives the
    bootstrap intervals (None when the rows' test probabilities are not at hand: then only the
    point differences, and the target is not decided)."""
    diff = {attr: rows[a]["attributes"][attr][metric] - rows[b]["attributes"][attr][metric] for attr in ATTRIBUTES}
    out: dict[str, Any] = {"a": a, "b": b, "metric": metric, "diff": diff}
    ci = {attr: intervals(a, b, attr) for attr in ATTRIBUTES}
    if all(v is not None for v in ci.values()):
        out["ci95"] = {attr: v[metric] for attr, v in ci.items()}
    return with_verdicts(out, rows)


def with_verdicts(target: dict[str, Any], rows: dict[str, Any]) -> dict[str, Any]:
    """The target's per-attribute verdicts, `met` and its one-line detail (from diff and ci95)."""
    ci = target.get("ci95")
    if ci is None:
        target["met"], target["verdicts"] = None, None
    else:
        bar = {attr: rows[target["b"]]["attributes"][attr][target["metric"]] for attr in ci}
        target["verdicts"] = {attr: verdict(ci[attr], bar[attr]) for attr in ci}
        target["met"] = all(v in ("win", "non-inferior") for v in target["verdicts"].values())
    target["detail"] = ", ".join(
        f"{attr} {d:+.3f}" + (" [{:+.3f}, {:+.3f}] {}".format(*ci[attr], target["verdicts"][attr]) if ci else "")
        for attr, d in target["diff"].items()
    )
    return target


def check_targets(
    results: dict[str, Any], probs: dict[str, dict[str, np.ndarray]], y_test: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Each target with the per-attribute differences and, where both rows' test probabilities
    are at hand, their paired-bootstrap 95 % intervals."""
    rows = results["rows"]
    memo: dict[tuple[str, str, str], dict[str, list[float]]] = {}

    def intervals(a: str, b: str, attr: str) -> dict[str, list[float]] | None:
        if a not in probs or b not in probs:
            return None
        if (a, b, attr) not in memo:  # one resampling gives both metrics
            memo[a, b, attr] = paired_bootstrap(probs[a][attr], probs[b][attr], y_test[attr])
        return memo[a, b, attr]

    out = {}
    for metric in ("f1_macro", "r_at_p95"):
        out[f"best beats TF-IDF+LR on {metric}"] = _compare(rows, results["best"], "tfidf_lr", metric, intervals)
    single, multi = best_single_and_multimodal(rows)
    if single and multi:
        out[f"best multimodal ({multi}) beats best single-modality ({single}) on f1_macro"] = _compare(
            rows, multi, single, "f1_macro", intervals
        )
    ch = results.get("colour_hidden")
    if ch and "text" in ch["rows"]:
        multi = [n for n in ch["rows"] if n not in ("text", "image")]
        bm = best_on_validation(ch["rows"], multi)
        d = (
            ch["rows"][bm]["attributes"]["baseColour"]["masked"]["f1_macro"]
            - ch["rows"]["text"]["attributes"]["baseColour"]["masked"]["f1_macro"]
        )
        out["colour hidden: best multimodal >= text + 0.15 on masked baseColour macro-F1"] = {
            "met": d >= 0.15,
            "detail": f"{bm} {d:+.3f}",
        }
    return out


def restate_targets(results: dict[str, Any]) -> None:
    """Re-decide stored targets (their diffs and intervals) by `verdict`: quality.json files written
    before targets carried their rows name them only in the target's text."""
    import re

    for key, target in results.get("targets", {}).items():
        if "ci95" not in target:
            continue
        if "a" not in target:
            pair = re.search(r"\((\S+)\) beats best single-modality \((\S+)\)", key)
            target["a"], target["b"] = pair.groups() if pair else (results["best"], "tfidf_lr")
            target["metric"] = key.rsplit(" on ", 1)[1]
        with_verdicts(target, results["rows"])
